"""The noise_sensitivity experiment: zero noise is the noise-free emulated read exactly, one
compilation per group for any sigma values, more noise costs accuracy, the report, input
checks, and the default command that runs it."""

from pathlib import Path

import jax
import numpy as np
import pytest

from reram_emu import training
from reram_emu.datasets import load_dataset
from reram_emu.experiments import __main__ as command
from reram_emu.experiments import noise_sensitivity as ns
from reram_emu.models import mlp
from reram_emu.nn import evaluate_accuracy

MAPPING = "ISAAC"


@pytest.fixture(scope="module")
def context():
    """A small MLP trained briefly on digits, read through ISAAC: 48 images, 3 keys."""
    data = load_dataset("digits", seed=0, flatten=True)
    model = mlp((64, 32, 10))
    state, _ = training.train(model.apply, model.init(jax.random.key(0)), data,
                              training.TrainConfig(epochs=6, batch_size=32, learning_rate=3e-3))
    return ns.build_context(model, {MAPPING: state.params}, data.x_test[:48], data.y_test[:48],
                            data.x_train[:200], keys=3)


def batch(axis, sigmas):
    return [{"mapping": MAPPING, "noise": axis, "sigma": s} for s in sigmas]


@pytest.mark.parametrize("axis, large", [("variation", 1.0), ("read noise", 0.6)])
def test_zero_noise_is_exact_one_compilation_and_noise_costs_accuracy(context, axis, large):
    read = context["reads"][MAPPING]
    reference = evaluate_accuracy(
        read["analog"], read["params"], context["x"], context["y"],
        scales={k: np.asarray(v) for k, v in read["scales"].items()})
    assert reference.mean > 0.7  # the model has learnt something worth losing

    rows = ns.evaluate(context, batch(axis, [0.0, 0.05, large]), seed=0)
    assert [r["keys"] for r in rows] == [3, 3, 3]
    # sigma 0 reproduces the noise-free read for every key, exactly
    assert rows[0]["accuracies"] == [reference.mean] * 3
    assert rows[0]["ci_low"] == rows[0]["accuracy"] == rows[0]["ci_high"]
    # a large sigma costs accuracy, and the keys draw different noise
    assert rows[2]["accuracy"] < reference.mean - 0.1
    assert np.std(rows[2]["accuracies"]) > 0
    assert rows[2]["ci_low"] <= rows[2]["accuracy"] <= rows[2]["ci_high"]
    assert context["traces"][(MAPPING, axis)] == 1

    # new sigma values, same number of points: the compiled sweep is reused
    again = ns.evaluate(context, batch(axis, [0.0, 0.2, 0.4]), seed=0)
    assert context["traces"][(MAPPING, axis)] == 1
    assert again[0]["accuracies"] == rows[0]["accuracies"]
    # another seed draws other noise
    other = ns.evaluate(context, batch(axis, [0.0, 0.05, large]), seed=1)
    assert other[0]["accuracies"] == rows[0]["accuracies"]
    assert other[2]["accuracies"] != rows[2]["accuracies"]


def test_one_sweep_over_both_axes_matches_the_separate_ones(context):
    # ISAAC and PRIME sweep both axes in one compilation; the numbers are the same as the
    # single-axis sweeps' (same keys, the other path adds exactly zero)
    mixed = batch("variation", [0.0, 1.0]) + batch("read noise", [0.6])
    rows = ns.evaluate(context, mixed, seed=0)
    assert context["traces"][(MAPPING, "both")] == 1
    alone = {axis: ns.evaluate(context, batch(axis, [0.0, 0.05, large]), seed=0)
             for axis, large in [("variation", 1.0), ("read noise", 0.6)]}
    assert rows[0]["accuracies"] == alone["variation"][0]["accuracies"]
    assert rows[1]["accuracies"] == alone["variation"][2]["accuracies"]
    assert rows[2]["accuracies"] == alone["read noise"][2]["accuracies"]
    assert ns.group(mixed[0]) == ns.group(mixed[-1]) == (MAPPING, "both")
    forms = {"mapping": "FORMS m=8", "sigma": 0.1}
    assert ns.group({**forms, "noise": "variation"}) != ns.group({**forms, "noise": "read noise"})


def test_evaluate_rejects_bad_batches(context):
    with pytest.raises(ValueError, match="one mapping"):
        ns.evaluate(context, batch("variation", [0.0]) + [
            {"mapping": "PRIME", "noise": "variation", "sigma": 0.1}], seed=0)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        ns.evaluate(context, batch("variation", [-0.1]), seed=0)
    with pytest.raises(ValueError, match="was not prepared"):
        ns.evaluate(context, [{"mapping": "PRIME", "noise": "variation", "sigma": 0.1}], seed=0)
    with pytest.raises(ValueError, match="noise must be one of"):
        ns.evaluate(context, [{"mapping": MAPPING, "noise": "heat", "sigma": 0.1}], seed=0)
    with pytest.raises(ValueError, match="unknown mapping"):
        ns.mapping_config("FORMS m=5")
    with pytest.raises(ValueError, match="keys must be an integer >= 1"):
        ns.build_context(context["model"], {MAPPING: context["reads"][MAPPING]["params"]},
                         context["x"], context["y"], context["x"], keys=0)


def test_points_groups_and_settings():
    for quick in (True, False):
        found = ns.points(quick)
        for mapping, axis in {(p["mapping"], p["noise"]) for p in found}:
            sigmas = [p["sigma"] for p in found if (p["mapping"], p["noise"]) == (mapping, axis)]
            assert sigmas[0] == 0.0 and sorted(sigmas) == sigmas and len(sigmas) >= 4
    full = ns.points(False)
    assert {p["mapping"] for p in full} == set(ns.MAPPINGS)
    assert ns.SETTINGS[False]["keys"] >= 20
    # every design reads 8-bit weights and 8-bit inputs
    for mapping in ns.MAPPINGS:
        config = ns.mapping_config(mapping)
        assert config.weights.bits == 8 and config.inputs.bits == 8


def test_report_writes_the_plot_and_computed_findings(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for mapping, slope in [("FORMS m=8", 0.1), ("ISAAC", 1.0)]:
        for axis in ns.AXES:
            for sigma in (0.0, 0.1, 0.2):
                per_key = list(np.clip(0.95 - slope * sigma + 0.01 * rng.normal(size=4)
                                       * (sigma > 0), 0, 1))
                mean, low, high = training.mean_ci(per_key)
                rows.append({"mapping": mapping, "noise": axis, "sigma": sigma,
                             "model": "m", "accuracy": mean, "ci_low": low, "ci_high": high,
                             "accuracies": per_key, "keys": 4, "images": 10})
    text = ns.report(rows, tmp_path, quick=True)
    assert (tmp_path / "noise_sensitivity.png").stat().st_size > 10_000
    assert "](noise_sensitivity.png)" in text
    assert "least to most: FORMS m=8" in text and "do not overlap" in text


def test_default_command_runs_noise_sensitivity_quick(monkeypatch, capsys):
    assert command.DEFAULT == "noise_sensitivity"
    assert command.load(command.DEFAULT) is ns
    calls = []
    monkeypatch.setattr(command, "run_experiment",
                        lambda module, out, **options: calls.append((module, out, options)))
    assert command.main([]) == 0
    module, out, options = calls[0]
    assert module is ns and Path(out) == Path("reports") / "noise_sensitivity"
    assert options["quick"] is True and options["resume"] is True
    assert "reports/noise_sensitivity/summary.md" in capsys.readouterr().out
