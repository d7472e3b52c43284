"""The adc_resolution and mappings experiments on a small trained model and few test images.

The model: the digits MLP trained briefly in float; "polarized" copies are the float weights
projected onto the polarized set (ADMM is too slow for a unit test). What is checked: a
lossless ADC reproduces the 8-bit digital reference prediction for prediction, a 1-bit ADC is
worse than FORMS's log2(m)+1 bits, the worst-case range widens the LSB (its effect on accuracy
is what the experiment measures); every mapping with a
lossless ADC agrees with the same reference, PRIME's calibrated 6-bit ADC stays close to it;
the same key gives the same noisy result and another key a different one; bad input is refused.
"""

import functools

import jax
import numpy as np
import pytest

from reram_emu import project_polarized, training
from reram_emu.converters import adc_lsb_levels
from reram_emu.datasets import load_dataset
from reram_emu.experiments import adc_resolution as A
from reram_emu.experiments import mappings as M
from reram_emu.experiments.__main__ import EXPERIMENTS
from reram_emu.models import mlp

IMAGES = 150


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits", seed=0, flatten=True)
    model = mlp((64, 128, 64, 10))
    rng = np.random.default_rng(0)  # He-normal init in numpy (no per-shape compilations)
    init = {name: {"w": jax.numpy.asarray(rng.normal(size=spec.weight_shape).astype(np.float32)
                                          * np.sqrt(2.0 / spec.in_features)),
                   "b": jax.numpy.zeros(spec.out_features)} for name, spec in model.layers}
    state, _ = training.train(model.apply, init, data,
                              training.TrainConfig(epochs=3, batch_size=32, learning_rate=3e-3))
    params = state.params

    @functools.partial(jax.jit, static_argnums=1)
    def polarized(p, m):
        return {name: {"w": project_polarized(layer["w"], m), "b": layer["b"]}
                for name, layer in p.items()}

    return {"model": model, "float": params,
            "polarized": {4: polarized(params, 4), 8: polarized(params, 8)},
            "x": data.x_test[:IMAGES], "y": data.y_test[:IMAGES], "x_cal": data.x_train[:200],
            "data": data}


def test_registered_and_points():
    assert EXPERIMENTS["adc_resolution"] == "reram_emu.experiments.adc_resolution"
    assert EXPERIMENTS["mappings"] == "reram_emu.experiments.mappings"
    assert [A.rule_bits(m) for m in (4, 8, 16, 32)] == [3, 4, 5, 6]
    assert [A.lossless_bits(m) for m in (4, 8, 16, 32)] == [4, 5, 6, 7]  # codes 3m levels
    full = A.points(False)
    for m in A.FRAGMENTS_FULL:
        for adc_range in A.RANGES:
            bits = sorted(p["adc_bits"] for p in full if p["m"] == m
                          and p["adc_range"] == adc_range and p["adc_noise_lsb"] == 0)
            assert bits == list(range(1, A.lossless_bits(m) + 1))
    assert len({A.group(p) for p in full}) < len(full)  # noisy points share a compilation
    quick = A.points(True)
    assert {p["m"] for p in quick} == {4, 8, 16} and len(quick) < len(full) / 4
    assert len(M.points(False)) == len(M.NOISE_LEVELS) * len(M.DESIGNS_FULL)
    assert {M.group(p) for p in M.points(True)} == set(M.DESIGNS_QUICK)
    assert {p["noise"] for p in M.points(True)} == {"none", "combined"}
    combined = M.noise_parameters("combined")
    for name, value in M.COMBINED.items():
        assert float(getattr(combined, name)) == pytest.approx(value)
    for level, fields in M.ALONE.items():  # one non-ideality at its combined value, rest 0
        alone = M.noise_parameters(level)
        for name, value in M.COMBINED.items():
            assert float(getattr(alone, name)) == pytest.approx(value if name in fields else 0)
    with pytest.raises(ValueError, match="noise level"):
        M.noise_parameters("none")


def test_bad_input_is_refused(trained):
    with pytest.raises(ValueError, match="power of two"):
        A.rule_bits(6)
    with pytest.raises(ValueError, match="adc_range"):
        A.adc_config(8, "calibrated", 4)
    with pytest.raises(ValueError, match="unknown design"):
        M.design_config("TPU")
    with pytest.raises(TypeError):
        M.design_config(8)
    model = trained["model"]
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        A.make_context(model, {4: trained["polarized"][4]}, trained["x"][:, :10], trained["y"],
                       trained["x_cal"])
    with pytest.raises(ValueError, match="polarized at m=16"):
        M.make_context(model, trained["float"], trained["polarized"], trained["x"],
                       trained["y"], trained["x_cal"], designs=("FORMS m=16",))
    with pytest.raises(ValueError, match="keys"):
        M.make_context(model, trained["float"], trained["polarized"], trained["x"],
                       trained["y"], trained["x_cal"], designs=("ISAAC",), keys=0)


def test_adc_resolution_lossless_equals_reference_and_few_bits_lose(trained):
    context = A.make_context(trained["model"], {4: trained["polarized"][4]}, trained["x"],
                             trained["y"], trained["x_cal"], keys=2)
    batch = [{"m": 4, "adc_range": r, "adc_bits": b, "adc_noise_lsb": 0.0}
             for r, b in (("fixed", 1), ("fixed", 3), ("fixed", 4))]
    rows = {(p["adc_range"], p["adc_bits"]): r
            for p, r in zip(batch, A.evaluate(context, batch, seed=0))}
    reference = context["reference_accuracy"][4]
    assert reference > 0.5  # the projected model still classifies
    lossless = rows[("fixed", 4)]  # 4 bits code the worst-case sum 12 at one level: exact
    assert lossless["lsb_levels"] == 1.0 and lossless["full_scale_levels"] >= 12
    assert lossless["agreement_with_reference"] == 1.0
    assert lossless["accuracy"] == reference
    assert rows[("fixed", 1)]["accuracy"] < rows[("fixed", 3)]["accuracy"] - 0.1
    # the worst-case range at 3 bits widens the LSB to 2 levels (7 codes x 2 >= 12)
    assert adc_lsb_levels(A.adc_config(4, "worst_case", 3)) == 2.0
    assert adc_lsb_levels(A.adc_config(4, "worst_case", 4)) == 1.0
    with pytest.raises(ValueError, match="m=8"):
        A.evaluate(context, [{"m": 8, "adc_range": "fixed", "adc_bits": 4,
                              "adc_noise_lsb": 0.0}], seed=0)


def test_mappings_agree_with_the_reference_without_noise(trained):
    designs = ("FORMS m=8", "ISAAC", "PRIME", "PRIME, 16-bit ADC")
    context = M.make_context(trained["model"], trained["float"], trained["polarized"],
                             trained["x"], trained["y"], trained["x_cal"], designs=designs,
                             keys=2)
    d = context["designs"]
    # ISAAC and PRIME read the same float model with the same 8-bit weights and inputs
    np.testing.assert_array_equal(d["ISAAC"]["reference_predictions"],
                                  d["PRIME"]["reference_predictions"])
    # PRIME's 6-bit ADC cannot reach one level per code: calibrated LSBs are coarse
    assert all(lsb > 1 for lsb in d["PRIME"]["lsb_levels"].values())
    rows = {p["design"]: r for p, r in zip(
        [{"design": x, "noise": "none"} for x in designs],
        M.evaluate(context, [{"design": x, "noise": "none"} for x in designs], seed=0))}
    for lossless in ("ISAAC", "PRIME, 16-bit ADC", "FORMS m=8"):
        assert rows[lossless]["agreement_with_reference"] == 1.0, lossless
        assert rows[lossless]["accuracy"] == d[lossless]["reference_accuracy"]
    assert rows["PRIME"]["agreement_with_reference"] >= 0.8
    assert abs(rows["PRIME"]["accuracy"] - d["PRIME"]["reference_accuracy"]) <= 0.1
    # cost: FORMS converts per 8-row fragment, ISAAC per 128 rows, PRIME per 256 rows and
    # 3-bit DAC cycles
    conversions = {k: r["adc_conversions_per_image"] for k, r in rows.items()}
    assert conversions["FORMS m=8"] > conversions["ISAAC"] > conversions["PRIME"]
    assert conversions["PRIME"] == conversions["PRIME, 16-bit ADC"]



def test_noisy_mapping_same_key_same_result(trained):
    """Combined noise through a one-layer linear classifier (least squares on the digits: a
    noisy read compiles per model, and one layer compiles fastest)."""
    data = trained["data"]
    model = mlp((64, 10))
    x, onehot = data.x_train, np.eye(10, dtype=np.float32)[data.y_train]
    w = np.linalg.lstsq(x, onehot - onehot.mean(0), rcond=None)[0].astype(np.float32)
    params = {"fc1": {"w": jax.numpy.asarray(w),
                      "b": jax.numpy.asarray(onehot.mean(0) - x.mean(0) @ w)}}
    context = M.make_context(model, params, {}, trained["x"], trained["y"], trained["x_cal"],
                             designs=("PRIME, 16-bit ADC",), keys=3)
    reference = context["designs"]["PRIME, 16-bit ADC"]["reference_accuracy"]
    assert reference > 0.8
    noisy = [{"design": "PRIME, 16-bit ADC", "noise": "combined"}]
    first = M.evaluate(context, noisy, seed=0)[0]
    again = M.evaluate(context, noisy, seed=0)[0]
    other = M.evaluate(context, noisy, seed=1)[0]
    assert first["keys"] == 3 and first["per_key"] == again["per_key"]
    assert first["per_key"] != other["per_key"]
    assert len(set(first["per_key"])) > 1  # each key draws its own devices and noise
    assert first["accuracy"] < reference
    assert first["ci_low"] < first["accuracy"] < first["ci_high"]
