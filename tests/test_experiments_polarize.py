"""The ``polarize`` experiment end to end on a tiny digits setting (about 20 s on 2 cores)."""

import dataclasses
import json

import numpy as np
import pytest

from reram_emu import admm as A
from reram_emu import training as T
from reram_emu.experiments import polarize
from reram_emu.experiments.runner import run_experiment

TINY = polarize.Settings(
    model="mlp",
    baseline=T.TrainConfig(epochs=8, batch_size=32, learning_rate=3e-3),
    polarize=T.TrainConfig(batch_size=32, learning_rate=1e-3),
    admm=A.ADMMConfig(rho=1e-2, rho_growth=2.0, updates_per_epoch=2, epochs=3,
                      finetune_epochs=3, finetune_learning_rate=3e-3),
    fragments=(8,), variation_m=(8,), forced_images=200, variation_images=200,
    combined_images=100, variation_keys=3, combined_keys=3, batch_size=100, monitor_images=200)


CHEAP = [{"dataset": "digits", "stage": "baseline", "m": None},
         {"dataset": "digits", "stage": "polarized", "m": 8},
         {"dataset": "digits", "stage": "adc_range", "m": 8}]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The cheap stages of the tiny setting through the runner (trains and checkpoints)."""
    out = tmp_path_factory.mktemp("polarize")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(polarize.SETTINGS, True, {"digits": TINY})
        patch.setattr(polarize, "points", lambda quick: list(CHEAP))
        record = run_experiment(polarize, out, quick=True, progress=False)
        again = run_experiment(polarize, out, quick=True, resume=True, progress=False)
    return out, record, again


def test_tiny_run_reports_the_checks_and_resumes(tiny_run):
    out, record, again = tiny_run
    rows = {(r["stage"], r["m"]): r for r in record["rows"]}
    assert set(rows) == {("baseline", None), ("polarized", 8), ("adc_range", 8)}
    assert rows[("baseline", None)]["float_acc"] >= 0.9
    pol = rows[("polarized", 8)]
    assert pol["accepted_by_strict_mapping"] and pol["eval_images"] == 450
    assert pol["emulated_acc"] >= 0.85
    low, high = pol["drop_ci_points"]
    assert low <= pol["drop_points"] <= high
    # the drop is the float baseline minus the emulated model on the same images
    assert pol["drop_points"] == pytest.approx(
        100 * (pol["baseline_float_acc_eval_images"] - pol["emulated_acc"]), abs=1e-9)
    # forcing the unpolarized model onto the polarized mapping costs far more than polarizing
    assert pol["forced_loss_points"] > pol["drop_points"] + 10
    assert pol["fragments_broken"] > pol["fragments"] / 2
    assert 0 < rows[("adc_range", 8)]["worst_case_acc"] <= 1
    for row in record["rows"]:
        assert row["seconds"] > 0 and row["cpu_seconds"] >= 0 and row["load_start"] >= 0
    summary = (out / "summary.md").read_text()
    assert "The issue's checks" in summary and "drop at m = 8" in summary
    assert "wall time of the whole pipeline" in summary
    assert (out / "accuracy_vs_m.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["configuration"]["settings"]
    assert again["resumed_points"] == len(CHEAP)  # resume evaluates nothing again


def test_noise_stages_reuse_the_checkpoints(tiny_run, monkeypatch):
    """Variation and noise-aware stages on the tiny run's checkpoints (nothing retrained)."""
    out, record, _ = tiny_run
    monkeypatch.setitem(polarize.SETTINGS, True, {"digits": TINY})
    context = polarize.prepare(True, 0, out / "work")
    points = [{"dataset": "digits", "stage": "variation", "m": 8},
              {"dataset": "digits", "stage": "noise_aware", "m": 8},
              {"dataset": "digits", "stage": "polarized", "m": 8}]
    var, na, pol = polarize.evaluate(context, points, 0)
    assert pol["loaded_checkpoint"]
    assert pol["emulated_acc"] == record["rows"][1]["emulated_acc"]  # same model, same read
    assert var["keys"] == 3 and var["images"] == 200
    assert var["excess_loss_ci_points"][0] <= var["excess_loss_points"] \
        <= var["excess_loss_ci_points"][1]
    assert var["polarized_clean_acc"] >= 0.85 and var["differential_clean_acc"] >= 0.85
    assert not na["loaded_checkpoint"]  # the noise-aware fine-tuning ran now
    assert na["gain_ci_points"][0] <= na["gain_points"] <= na["gain_ci_points"][1]
    assert na["gain_points"] == pytest.approx(
        100 * (na["noise_aware_combined_acc"] - na["plain_combined_acc"]), abs=1e-9)
    assert na["plain_clean_acc"] == pytest.approx(pol["emulated_acc"], abs=0.05)
    rows = [{**p, **r} for p, r in zip(points, (var, na, pol))] + record["rows"][:1]
    summary = polarize.report(rows, out, True)
    assert "Log-normal device variation" in summary and "Noise-aware vs plain" in summary


def test_settings_are_checked():
    with pytest.raises(ValueError, match="fragments must include 8"):
        dataclasses.replace(TINY, fragments=(4,), variation_m=(4,))
    with pytest.raises(ValueError, match="at least 2 keys"):
        dataclasses.replace(TINY, variation_keys=1)
    with pytest.raises(ValueError, match="must not exceed eval_images"):
        dataclasses.replace(TINY, eval_images=100)
    with pytest.raises(ValueError, match="model"):
        dataclasses.replace(TINY, model="resnet")
    for field in ("augment", "augment_flow"):  # the mlp reads flattened digits
        with pytest.raises(ValueError, match="need an image model"):
            dataclasses.replace(TINY, model="mlp", **{field: True})


def test_points_and_configuration():
    full = polarize.points(False)
    assert [p["dataset"] for p in full][0] == "mnist"
    assert {p["stage"] for p in full} == set(polarize.STAGES)
    assert sum(p["stage"] == "polarized" for p in full if p["dataset"] == "mnist") == 3
    assert all(p["m"] == 8 for p in full if p["dataset"] == "mnist"
               and p["stage"] == "variation")
    assert polarize.SETTINGS[False]["mnist"].variation_keys >= 20
    assert polarize.forms(8).adc.bits == 4 and polarize.differential(8).adc.bits == 5
    assert len({polarize.group(p) for p in full}) == len(full)
    json.dumps(polarize.configuration(False))


def test_crossed_interval_counts_keys_and_images():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 300)) + rng.normal(size=(20, 1)) + rng.normal(size=(1, 300))
    mean, low, high = T.crossed_ci(values)
    assert low < mean < high and mean == pytest.approx(values.mean())
    # wider than the interval over keys alone, which ignores the images' spread
    _, klow, khigh = T.mean_ci(values.mean(axis=1))
    assert high - low > khigh - klow
    # one row: the paired interval over images
    d = rng.integers(-1, 2, size=500).astype(float)
    _, lo, hi = T.crossed_ci(d)
    half = 1.96 * d.std(ddof=1) / np.sqrt(500)
    assert hi - lo == pytest.approx(2 * half, rel=0.01)
    with pytest.raises(ValueError):
        T.crossed_ci(np.zeros((2, 2, 2)))
