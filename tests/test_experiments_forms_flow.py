"""The ``forms_flow`` experiment end to end on its quick digits setting, with fewer keys."""

import dataclasses
import json

import numpy as np
import pytest

from reram_emu import training as T
from reram_emu.experiments import forms_flow as F
from reram_emu.experiments.runner import run_experiment


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("forms_flow")
    settings, prune = F.SETTINGS[True]["digits"]
    tiny = dataclasses.replace(settings, variation_keys=3, variation_images=200)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(F.SETTINGS, True, {"digits": (tiny, prune)})
        record = run_experiment(F, out, quick=True, progress=False)
        again = run_experiment(F, out, quick=True, resume=True, progress=False)
    return out, record, again


def test_quick_flow_reports_every_stage_and_resumes(quick_run):
    out, record, again = quick_run
    rows = {(r["stage"], r["m"]): r for r in record["rows"]}
    assert set(rows) == {(p["stage"], p["m"]) for p in F.points(True)}
    base, pruned = rows[("baseline", None)], rows[("pruned", None)]
    assert base["float_acc"] > 0.95
    # fc1 (64 x 128) and fc2 (128 x 64) keep half their rows and columns, fc3 half its rows
    layers = {r["layer"]: r for r in pruned["layers"]}
    assert (layers["fc1/w"]["rows_kept"], layers["fc1/w"]["columns_kept"]) == (32, 64)
    assert (layers["fc2/w"]["rows_kept"], layers["fc2/w"]["columns_kept"]) == (64, 32)
    assert (layers["fc3/w"]["rows_kept"], layers["fc3/w"]["columns_kept"]) == (32, 10)
    assert pruned["prune_ratio"] == pytest.approx(17024 / (2048 + 2048 + 320))
    for m in (4, 8, 16):
        flow = rows[("flow", m)]
        assert flow["polarized"] and flow["eval_images"] == 450
        assert flow["drop_points"] == pytest.approx(
            100 * (flow["baseline_float_acc_eval_images"] - flow["emulated_acc"]), abs=1e-9)
        low, high = flow["drop_ci_points"]
        assert low <= flow["drop_points"] <= high
        # polarization zeroes more weights, never revives a pruned one
        assert flow["nonzero"] <= pruned["nonzero"]
        assert flow["paper_reduction"] == pytest.approx(pruned["prune_ratio"] * 8)
        assert flow["counted_reduction_vs_dense_differential_8bit"] > 1
        assert flow["emulated_acc"] > 0.85
    rob = rows[("robustness", 8)]
    assert rob["keys"] == 3 and rob["images"] == 200
    assert {"original", "polarized-only", "pruned", "full"} <= set(rob)
    assert rob["full"]["mapping"] == "FORMS" and rob["pruned"]["mapping"] == "differential"
    c = rows[("cost", 16)]
    assert c["forms_over_isaac_gops_per_w"] > 0 and c["forms_over_isaac_gops_per_s_mm2"] > 0
    summary = (out / "summary.md").read_text()
    assert "Table I" in summary and "Table VI" in summary and "Table V" in summary
    assert json.loads((out / "results.json").read_text())["configuration"]["paper"]
    assert again["resumed_points"] == len(F.points(True))  # nothing evaluated again


def test_flow_checkpoints_every_stage(quick_run):
    out = quick_run[0]
    work = next((out / "work").glob("digits_seed0*"))
    for stage in ("prune", "flow_m4", "flow_m8", "flow_m16"):
        for phase in ("admm", "finetune"):
            assert (work / stage / f"{phase}.npz").exists(), (stage, phase)
    assert (work / "baseline.npz").exists()
