"""The experiments command: runner mechanics (results as they go, resume) and user errors."""

import json
import os
import subprocess
import sys
import types

import pytest

from reram_emu.experiments.__main__ import main
from reram_emu.experiments.runner import run_experiment


def fake_experiment(calls, fail_after=None):
    module = types.SimpleNamespace(NAME="fake", DESCRIPTION="a fake experiment")
    module.points = lambda quick: [{"sigma": s, "m": m} for m in (4, 8) for s in (0.0, 0.1)]
    module.group = lambda point: point["m"]
    module.prepare = lambda quick, seed, work: {"offset": seed}

    def evaluate(context, batch, seed):
        calls.append([p["sigma"] for p in batch])
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt
        return [{"error": p["sigma"] * p["m"] + context["offset"]} for p in batch]

    module.evaluate = evaluate
    module.report = lambda rows, out, quick: f"{len(rows)} rows"
    return module


def test_results_written_as_points_finish_and_resume_skips_them(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_experiment(fake_experiment(calls, fail_after=1), tmp_path, progress=False)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 2  # header + the first group's two points, saved before the stop
    calls.clear()
    record = run_experiment(fake_experiment(calls), tmp_path, resume=True, progress=False)
    assert calls == [[0.0, 0.1]]  # only the unfinished group ran
    assert record["resumed_points"] == 2 and len(record["rows"]) == 4
    assert [r["error"] for r in record["rows"]] == pytest.approx([0.0, 0.4, 0.0, 0.8])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["version"] and saved["command"].startswith("python -m reram_emu.experiments")
    assert "4 rows" in (tmp_path / "summary.md").read_text()
    # a fresh run keeps the earlier results aside instead of losing them
    run_experiment(fake_experiment([]), tmp_path, progress=False)
    assert len(list(tmp_path.glob("results.*.csv"))) == 1


def test_resume_refuses_other_settings(tmp_path):
    run_experiment(fake_experiment([]), tmp_path, progress=False)
    from reram_emu.experiments.runner import UserError
    with pytest.raises(UserError, match="other settings"):
        run_experiment(fake_experiment([]), tmp_path, resume=True, seed=3, progress=False)


def test_list_and_user_errors(capsys, tmp_path):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "layer_noise" in listed and "cost" in listed
    assert main(["run", "nonexistent"]) == 2
    assert "unknown experiment 'nonexistent'" in capsys.readouterr().err
    assert main(["run", "layer_noise", "--seed", "-1"]) == 2
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["run", "layer_noise", "--out", str(blocked / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_bad_option_exits_non_zero_without_traceback():
    done = subprocess.run([sys.executable, "-m", "reram_emu.experiments", "run", "layer_noise",
                           "--seed", "abc"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "invalid int value" in done.stderr
