"""Presets that work out of the box, the CPU-crash guard, and the two-wire sweep (issue 11)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu import training as T
from reram_emu import admm as A
from reram_emu.circuit import WireConfig
from reram_emu.config import CrossbarGeometry, DeviceConfig
from reram_emu.datasets import load_dataset
from reram_emu.models import mlp
from reram_emu.sweeps import noise_points

ROOT = Path(__file__).resolve().parents[1]

#: allowed accuracy loss (points of test accuracy) of a preset read noise-free against float
PRESET_MARGIN = 0.02


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", flatten=True)


@pytest.fixture(scope="module")
def trained(digits):
    """A 64-32-10 MLP trained on digits in float, and its FORMS-polarized copy (m = 8)."""
    model = mlp((64, 32, 10))
    state, _ = T.train(model.apply, model.init(jax.random.key(0)), digits,
                       T.TrainConfig(epochs=10, batch_size=32, learning_rate=3e-3), log=None)
    admm = A.ADMMConfig(fragment_rows=8, rho=1e-2, rho_growth=2.0, epochs=4,
                        updates_per_epoch=2, finetune_epochs=4)
    polarized = T.polarize(model.apply, state.params, digits, admm, T.TrainConfig(batch_size=32),
                           log=None, check_config=rx.preset("forms")).params
    return model, state.params, polarized


def read_by_hand(params, x, config, calibration=None):
    """The README's flow, layer by layer: map, program, (calibrate,) read; ReLU between."""
    h = jnp.asarray(x, jnp.float32)
    names = sorted(params)
    for i, name in enumerate(names):
        layer = rx.program(rx.map_weights(np.asarray(params[name]["w"]), config))
        if config.adc.range == "calibrated":
            layer = rx.calibrate_adc(layer, calibration[name])
        h = rx.read(layer, h).outputs + params[name]["b"]
        if i < len(names) - 1:
            h = jax.nn.relu(h)
    return h


def hidden_inputs(params, x):
    """Float inputs of each layer (for the ADC calibration of the PRIME preset)."""
    h, inputs = jnp.asarray(x, jnp.float32), {}
    names = sorted(params)
    for i, name in enumerate(names):
        inputs[name] = h
        h = h @ params[name]["w"] + params[name]["b"]
        if i < len(names) - 1:
            h = jax.nn.relu(h)
    return inputs


@pytest.mark.parametrize("name", ["forms", "isaac", "prime"])
def test_each_preset_keeps_a_trained_model_accurate(name, trained, digits):
    model, float_params, polarized = trained
    params = polarized if name == "forms" else float_params
    float_acc = T.accuracy(model.apply, params, digits.x_test, digits.y_test)
    config = rx.preset(name)
    calibration = hidden_inputs(params, digits.x_train[:200]) if name == "prime" else None
    logits = read_by_hand(params, digits.x_test, config, calibration)
    acc = float(np.mean(np.argmax(np.asarray(logits), -1) == digits.y_test))
    assert acc >= float_acc - PRESET_MARGIN, (name, acc, float_acc)


def test_forms_worst_case_range_stays_an_option_and_loses_resolution(trained, digits):
    """The alternative the FORMS preset used to default to: an LSB of two levels."""
    _, _, polarized = trained
    worst = rx.preset("forms").replace(adc=rx.ADCConfig(bits=4, range="worst_case"))
    x = digits.x_test[:100]
    ideal = np.asarray(jnp.asarray(hidden_inputs(polarized, x)["fc2"]) @ polarized["fc2"]["w"]
                       + polarized["fc2"]["b"])
    error = lambda config: np.linalg.norm(  # noqa: E731
        np.asarray(read_by_hand(polarized, x, config)) - ideal) / np.linalg.norm(ideal)
    assert error(worst) > 2 * error(rx.preset("forms"))


def test_prime_preset_refuses_to_read_before_calibration(trained, digits):
    _, params, _ = trained
    layer = rx.program(rx.map_weights(np.asarray(params["fc1"]["w"]), rx.preset("prime")))
    with pytest.raises(ValueError, match="calibrate_adc"):
        rx.read(layer, digits.x_test[:4])
    # inside jit the value cannot be checked: the outputs are NaN, never plausible numbers
    out = jax.jit(lambda lyr, x: rx.read(lyr, x).outputs)(layer, jnp.asarray(digits.x_test[:4]))
    assert np.all(np.isnan(np.asarray(out)))


def test_negative_inputs_raise_outside_jit_and_are_flagged_inside():
    rng = np.random.default_rng(0)
    w = np.abs(rng.normal(size=(16, 4)))
    layer = rx.program(rx.map_weights(w, rx.preset("forms")))
    x = rng.normal(size=(3, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="negative values.*signed=True"):
        rx.read(layer, x)
    counts = jax.jit(rx.read)(layer, jnp.asarray(x)).counts
    assert int(counts.negative_inputs) == int(np.sum(x < 0)) > 0
    assert int(rx.read(layer, np.abs(x)).counts.negative_inputs) == 0
    # signed inputs are one switch, and then read correctly
    signed = rx.program(rx.map_weights(w, rx.preset("forms", signed_inputs=True).replace(
        adc=rx.ADCConfig(bits=12))))
    out = np.asarray(rx.read(signed, x).outputs)
    reference = x @ np.asarray(signed.weight_scale * rx.map_weights(
        w, signed.config).integer_weights)
    np.testing.assert_allclose(out, reference, rtol=0.02, atol=0.02 * np.abs(reference).max())
    with pytest.raises(ValueError, match="1-bit DAC"):
        rx.preset("prime", signed_inputs=True)


def test_encode_weights_under_jit_counts_what_it_zeroes():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(32, 6)).astype(np.float32)  # not polarized
    config = rx.preset("forms")
    zeroed = jax.jit(lambda w: rx.encode_weights(w, config).weights_zeroed)(jnp.asarray(w))
    report = rx.map_weights(w, config.replace(
        mapping=rx.MappingConfig(on_violation="project"))).report
    assert int(zeroed) == report.weights_zeroed > 0
    polarized = np.asarray(rx.project_polarized(jnp.asarray(w), 8))
    assert int(jax.jit(lambda w: rx.encode_weights(w, config).weights_zeroed)(
        jnp.asarray(polarized))) == 0


def test_non_finite_inputs_under_jit_become_nan_outputs():
    rng = np.random.default_rng(2)
    layer = rx.program(rx.map_weights(np.abs(rng.normal(size=(16, 4))), rx.preset("forms")))
    x = np.abs(rng.normal(size=(3, 16))).astype(np.float32)
    x[1, 5] = np.nan
    out = np.asarray(jax.jit(rx.read)(layer, jnp.asarray(x)).outputs)
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[[0, 2]]))
    for scale in (0.0, -1.0, np.nan):
        out = jax.jit(rx.read)(layer, jnp.asarray(np.abs(x[[0]])), scale=jnp.float32(scale))
        assert np.all(np.isnan(np.asarray(out.outputs)))
    wide = jax.jit(rx.read_integers)(layer, jnp.full((1, 16), 70000, jnp.int32))
    assert np.all(np.isnan(np.asarray(wide.outputs)))  # beyond 16 bits: not wrapped


def test_swept_wire_resistances_solve_both_wires_as_configured():
    """Regression: a sweep carried one wire resistance and solved the bit lines with the
    word-line value. Both resistances swept must equal programming each config plainly."""
    rng = np.random.default_rng(3)
    base = rx.preset("forms").replace(geometry=CrossbarGeometry(32, 32, 8),
                                      wires=WireConfig(r_wire_row_ohms=0.5, r_wire_col_ohms=4.0))
    mapped = rx.map_weights(np.abs(rng.normal(size=(32, 8))), base)
    plain = rx.program(mapped)
    traced = rx.program(mapped, jax.random.key(0), noise=base.noise_parameters())
    np.testing.assert_array_equal(np.asarray(plain.response), np.asarray(traced.response))
    pairs = [(0.5, 4.0), (2.0, 0.25), (1.0, 1.0)]
    noise = noise_points(base, [{"wire_row_ohms": r, "wire_col_ohms": c}
                                          for r, c in pairs])
    swept = jax.jit(jax.vmap(lambda n: rx.program(mapped, jax.random.key(0), n).response))(noise)
    for i, (r, c) in enumerate(pairs):
        config = base.replace(wires=WireConfig(r_wire_row_ohms=r, r_wire_col_ohms=c))
        expected = rx.program(rx.map_weights(np.asarray(mapped.integer_weights) *
                                             np.asarray(mapped.weight_scale), config)).response
        np.testing.assert_allclose(np.asarray(swept[i]), np.asarray(expected), rtol=1e-5,
                                   atol=1e-4)
    assert not np.allclose(np.asarray(swept[0]), np.asarray(swept[1]))


def test_default_xla_option_is_set_unless_the_user_chose(tmp_path):
    """The YNNPACK guard (reram_emu/_xla_flags.py): added when unset, never overriding."""
    code = ("import os, reram_emu; from reram_emu import _xla_flags as f; "
            "print(repr(os.environ.get('XLA_FLAGS')), f.applied()[0])")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",
                                                               "RERAM_EMU_XLA_DEFAULTS")}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra},  # noqa: E731
                                       capture_output=True, text=True, check=True).stdout
    assert "--xla_cpu_experimental_ynn_fusion_type=' True" in run({})
    chosen = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert f"'{chosen}' False" in run({"XLA_FLAGS": chosen})
    assert "None False" in run({"RERAM_EMU_XLA_DEFAULTS": "0"})
    other = run({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
    assert "fast_math=false --xla_cpu_experimental_ynn_fusion_type=' True" in other


def test_program_that_crashed_jaxlib_runs_in_a_subprocess():
    """tests/programs/read_noise_sweep.py is the default study's point-5 sweep, which
    segfaulted jaxlib 0.10.2 on AVX2-only CPUs. Run with the package's defaults in its own
    process, a crash fails this test (exit status -11) instead of the whole suite."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "programs" /
                                                 "read_noise_sweep.py")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.startswith("ok ")


def test_device_config_numbers_still_reach_the_pipeline():
    """A configured variation is drawn (the numbers come from the config when no override)."""
    rng = np.random.default_rng(4)
    config = rx.preset("forms").replace(device=DeviceConfig(variation_sigma=0.1))
    mapped = rx.map_weights(np.abs(rng.normal(size=(16, 4))), config)
    with pytest.raises(ValueError, match="needs a jax.random key"):
        rx.program(mapped)
    a = rx.program(mapped, jax.random.key(0)).conductance
    b = rx.program(mapped, noise=config.noise_parameters(), key=jax.random.key(0)).conductance
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
