"""Nothing is lost: interrupted runs (SIGKILL, SIGINT) resume with every finished point, and
every damaged file of a report folder is refused on --resume with a message naming it."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from reram_emu import training
from reram_emu.experiments import __main__ as cli
from reram_emu.experiments import runner
from reram_emu.models import mlp

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- a fake experiment module

FAKE_SOURCE = '''
"""A fake experiment: one point per group, each slow, each rewriting a checkpoint."""
import os, time
import numpy as np
from reram_emu import training

NAME, DESCRIPTION = "fake", "a fake experiment"
DELAY = float(os.environ.get("FAKE_DELAY", "0"))

def points(quick):
    return [{"sigma": round(0.1 * i, 1), "mapping": "forms" if i % 2 else "isaac"}
            for i in range(int(os.environ.get("FAKE_POINTS", "6")))]

def group(point):
    return point["sigma"]

def _provenance(stage, seed):
    return training.checkpoint_provenance(stage, seed, size=4)

def prepare(quick, seed, work):
    state = {"w": np.arange(4.0)}
    for stage in ("baseline", "polarized"):
        path = work / f"{stage}.npz"
        if path.exists():
            training.load_checkpoint(str(path), state, expect=_provenance(stage, seed))
        else:
            training.save_checkpoint(str(path), state, epoch=0, step=0, seed=seed, done=True,
                                     provenance=_provenance(stage, seed))
    return {"work": work, "seed": seed}

def evaluate(context, batch, seed):
    rows = []
    for point in batch:
        time.sleep(DELAY)
        big = {"w": np.full(250_000, point["sigma"])}  # 2 MB: kills land inside writes too
        training.save_checkpoint(str(context["work"] / "scratch.npz"), big, epoch=0, step=0,
                                 seed=seed, provenance=_provenance("scratch", seed))
        rows.append({"accuracy": 0.9 - point["sigma"], "keys": 3, "note": "ok",
                     "per_key": [0.9, 0.8 - point["sigma"]], "pid": os.getpid()})
    return rows

def report(rows, out, quick):
    return f"{len(rows)} rows"
'''

LAUNCH = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from reram_emu.experiments import __main__ as m; m.EXPERIMENTS['fake'] = 'fake_exp'; "
          "sys.exit(m.main(sys.argv[2:]))")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake module, importable in this process (and by the subprocesses) as fake_exp."""
    (tmp_path / "fake_exp.py").write_text(FAKE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.EXPERIMENTS, "fake", "fake_exp")
    monkeypatch.delitem(sys.modules, "fake_exp", raising=False)
    return tmp_path


def _start(folder: Path, out: Path, *extra, delay=0.25, points=12) -> subprocess.Popen:
    env = {**os.environ, "FAKE_DELAY": str(delay), "FAKE_POINTS": str(points),
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(folder), "run", "fake", "--out",
                             str(out), "--no-progress", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(out: Path) -> list[dict]:
    path = out / "results.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _wait_for_rows(process, out: Path, n: int, timeout=90.0) -> None:
    deadline = time.time() + timeout
    while len(_rows(out)) < n:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the fake experiment did not progress"
        time.sleep(0.02)


def test_killed_and_interrupted_runs_resume_with_every_finished_point(fake, monkeypatch):
    monkeypatch.setenv("FAKE_POINTS", "12")
    out = fake / "report"
    first = _start(fake, out)
    _wait_for_rows(first, out, 3)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    after_kill = {row["point"]: row for row in _rows(out)}
    assert len(after_kill) >= 3 and not (out / "results.json").exists()

    second = _start(fake, out, "--resume")
    _wait_for_rows(second, out, len(after_kill) + 3)
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 130 and "interrupted" in err and "Traceback" not in err
    after_interrupt = {row["point"]: row for row in _rows(out)}
    assert len(after_interrupt) >= len(after_kill) + 3
    assert all(after_interrupt[p] == row for p, row in after_kill.items())  # kept, not redone

    third = _start(fake, out, "--resume", delay=0.0)
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    rows = _rows(out)
    points = [runner.point_id(p) for p in __import__("fake_exp").points(False)]
    assert sorted(row["point"] for row in rows) == sorted(points)  # each point exactly once
    final = {row["point"]: row for row in rows}
    assert all(final[p] == row for p, row in after_interrupt.items())
    assert len({row["pid"] for row in rows}) == 3  # three processes each finished points
    record = json.loads((out / "results.json").read_text())
    assert len(record["rows"]) == len(points) and record["resumed_points"] == len(after_interrupt)
    assert "12 rows" in (out / "summary.md").read_text()
    state, meta = training.load_checkpoint(str(out / "work" / "scratch.npz"),
                                           {"w": np.zeros(250_000)})
    assert meta["provenance"]["stage"] == "scratch"


# ---------------------------------------------------------------- damaged files on --resume


def _run(out: Path, capsys, *extra) -> tuple[int, str]:
    status = cli.main(["run", "fake", "--out", str(out), "--no-progress", *extra])
    return status, capsys.readouterr().err


@pytest.fixture
def finished(fake, capsys, monkeypatch):
    """A finished fake run (6 points) in fake/report."""
    monkeypatch.setenv("FAKE_POINTS", "6")
    out = fake / "report"
    assert _run(out, capsys) == (0, "")
    return out


def _csv_lines(out: Path) -> list[str]:
    return (out / "results.csv").read_text().splitlines(keepends=True)


def _damage_field(out: Path, column: str, value: str, line: int = 2) -> None:
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    rows[line - 1][rows[0].index(column)] = value
    with (out / "results.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _duplicate_with_other_value(out: Path) -> None:
    lines = _csv_lines(out)
    lines.append(lines[1].replace("0.9,", "0.5,", 1))
    (out / "results.csv").write_text("".join(lines))


def _drop_fields(out: Path) -> None:
    lines = _csv_lines(out)
    lines[3] = ",".join(lines[3].split(",")[:3]) + "\n"
    (out / "results.csv").write_text("".join(lines))


CSV_DAMAGE = {
    "binary garbage": (lambda out: (out / "results.csv").write_bytes(
        b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01garbage"), "not UTF-8 text"),
    "zero bytes": (lambda out: (out / "results.csv").write_bytes(b""), "(empty)"),
    "no point column": (lambda out: (out / "results.csv").write_text("a,b\n1,2\n"),
                        "no 'point' column"),
    "text accuracy": (lambda out: _damage_field(out, "accuracy", "abc"),
                      "line 2: column 'accuracy' is 'abc', of kind text, where the other rows "
                      "hold a number"),
    "nan accuracy": (lambda out: _damage_field(out, "accuracy", "nan", 3),
                     "line 3: column 'accuracy' is 'nan', not a finite number"),
    "infinite in a list": (lambda out: _damage_field(out, "per_key", "[0.9, Infinity]"),
                           "column 'per_key' is '[0.9, Infinity]', not a finite number"),
    "missing columns": (_drop_fields, "line 4: 3 fields, the header has 8 (no keys, note"),
    "extra field": (lambda out: (out / "results.csv").write_text(
        "".join(_csv_lines(out)[:2]) + _csv_lines(out)[2].rstrip("\n") + ",extra\n"),
        "line 3: 9 fields, the header has 8"),
    "unknown point": (lambda out: _damage_field(out, "point", '{"mapping":"isaac","sigma":7}'),
                      "is not one of this experiment's points"),
    "parameter disagrees": (lambda out: _damage_field(out, "sigma", "0.7"),
                            "column 'sigma' is '0.7' but its point says 0.0"),
    "duplicate point": (_duplicate_with_other_value, "is also on line 2, with other values"),
}


@pytest.mark.parametrize("case", sorted(CSV_DAMAGE))
def test_damaged_results_csv_is_refused_and_kept(finished, capsys, case):
    damage, message = CSV_DAMAGE[case]
    damage(finished)
    before = (finished / "results.csv").read_bytes()
    status, err = _run(finished, capsys, "--resume")
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    assert str(finished / "results.csv") in err and message in err
    assert "rerun without --resume" in err and "--out" in err
    assert (finished / "results.csv").read_bytes() == before  # not overwritten


def test_identical_duplicate_is_kept_once(finished, capsys):
    lines = _csv_lines(finished)
    (finished / "results.csv").write_text("".join(lines + [lines[2]]))
    assert _run(finished, capsys, "--resume") == (0, "")
    assert len(_rows(finished)) == 6


def test_blank_fields_of_other_groups_survive_resume(fake, tmp_path):
    """Rows without some metric (an empty field under the union header) stay without it."""
    module = types.SimpleNamespace(
        NAME="fake2", DESCRIPTION="d", points=lambda quick: [{"i": 0}, {"i": 1}],
        prepare=lambda *a: None, report=lambda rows, out, quick: json.dumps(rows),
        group=lambda p: p["i"],
        evaluate=lambda context, batch, seed: [{"a": 1.5} if p["i"] == 0 else {"b": None}
                                               for p in batch])
    first = runner.run_experiment(module, tmp_path / "r", progress=False)
    again = runner.run_experiment(module, tmp_path / "r", resume=True, progress=False)
    assert again["rows"] == first["rows"] == [{"i": 0, "a": 1.5}, {"i": 1, "b": None}]


@pytest.mark.parametrize("content", ["{not json", b"\xff\xfe\x00"])
def test_damaged_settings_is_refused(finished, capsys, content):
    path = finished / "settings.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    status, err = _run(finished, capsys, "--resume")
    assert status == 2 and str(path) in err and "is damaged" in err
    assert "rerun without --resume" in err and "Traceback" not in err


def test_results_without_settings_are_refused(finished, capsys):
    (finished / "settings.json").unlink()
    status, err = _run(finished, capsys, "--resume")
    assert status == 2 and "has no settings.json beside it" in err


def _write_with(save, path: Path, *args, **kwargs) -> None:
    with path.open("wb") as handle:  # a file object: numpy adds no suffix
        save(handle, *args, **kwargs)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CHECKPOINT_DAMAGE = {
    "truncated": (_truncate, "is damaged or not an .npz archive (BadZipFile"),
    "zero bytes": (lambda path: path.write_bytes(b""), "is not an .npz archive (an empty file)"),
    "text file": (lambda path: path.write_text("these are not the weights\n"),
                  "is not an .npz archive (it begins with b'thes')"),
    "plain npy": (lambda path: _write_with(np.save, path, np.zeros(3)), "not an .npz archive"),
    "another npz": (lambda path: _write_with(np.savez, path, w=np.zeros(4)),
                    "no entry __epoch__"),
    "baseline copied over": (lambda path: shutil.copy(path.parent / "baseline.npz", path),
                             "holds stage 'baseline', seed 0, configuration"),
    "no provenance": (lambda path: training.save_checkpoint(
        str(path), {"w": np.arange(4.0)}, epoch=0, step=0, seed=0),
        "does not record what produced it"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_damaged_or_swapped_checkpoint_is_refused(finished, capsys, case):
    damage, message = CHECKPOINT_DAMAGE[case]
    path = finished / "work" / "polarized.npz"
    damage(path)
    before = path.read_bytes()
    (finished / "results.csv").unlink()  # so that prepare (the checkpoints) runs again
    (finished / "settings.json").unlink()
    status, err = _run(finished, capsys, "--resume")
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    assert str(path) in err and message in err and "delete it to recompute" in err
    assert path.read_bytes() == before


def test_checkpoint_of_another_seed_is_refused(fake, capsys):
    out = fake / "report"
    assert _run(out, capsys, "--seed", "1") == (0, "")
    assert _run(fake / "report0", capsys) == (0, "")
    shutil.copy(out / "work" / "polarized.npz", fake / "report0" / "work" / "polarized.npz")
    (fake / "report0" / "results.csv").unlink()
    status, err = _run(fake / "report0", capsys, "--resume")
    assert status == 2 and "holds stage 'polarized', seed 1" in err
    assert "but stage 'polarized', seed 0" in err


def test_out_that_is_a_file_or_unwritable(fake, capsys):
    blocker = fake / "somefile"
    blocker.write_text("")
    status, err = _run(blocker, capsys)
    assert status == 2 and f"the output folder {blocker} is an existing file" in err
    assert "choose another --out" in err
    status, err = _run(blocker / "sub", capsys)
    assert status == 2 and f"cannot write to the output folder {blocker / 'sub'}" in err
    assert "choose another --out" in err


# ---------------------------------------------------------------- writes and checkpoints


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    runner._write_atomic(path, "old")
    checkpoint = tmp_path / "ck.npz"
    training.save_checkpoint(str(checkpoint), {"w": np.ones(3)}, epoch=1, step=1, seed=0)
    old = checkpoint.read_bytes()

    def fail(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        runner._write_atomic(path, "new")
    with pytest.raises(OSError):
        training.save_checkpoint(str(checkpoint), {"w": np.zeros(3)}, epoch=2, step=2, seed=0)
    assert path.read_text() == "old" and checkpoint.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "results.json"]


def test_train_refuses_a_checkpoint_of_other_settings(tmp_path):
    data = types.SimpleNamespace(x_train=np.random.default_rng(0).normal(size=(64, 8)),
                                 y_train=np.arange(64) % 3, x_test=np.zeros((4, 8)),
                                 y_test=np.zeros(4, int))
    model = mlp((8, 4, 3))
    params = model.init(jax.random.key(0))
    config = training.TrainConfig(epochs=1, batch_size=32)
    path = str(tmp_path / "baseline.npz")
    training.train(model.apply, params, data, config, checkpoint=path, log=None)
    training.train(model.apply, params, data, config, checkpoint=path, log=None)  # loads
    with pytest.raises(training.CheckpointError, match="holds stage 'baseline', seed 0"):
        training.train(model.apply, params, data,
                       training.TrainConfig(epochs=1, batch_size=32, seed=1),
                       checkpoint=path, log=None)
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(path)} holds .* but .* was "
                                         f"expected"):
        training.train(model.apply, model.init(jax.random.key(1)), data, config,
                       checkpoint=path, log=None)


def test_digits_mlp_refuses_a_swapped_polarized_checkpoint(tmp_path, monkeypatch):
    from reram_emu import admm
    from reram_emu.experiments import trained

    tiny = dict(epochs=1, max_steps_per_epoch=2)
    monkeypatch.setattr(trained, "BASELINE", training.TrainConfig(batch_size=32, **tiny))
    monkeypatch.setattr(trained, "ADMM_QUICK", admm.ADMMConfig(
        epochs=1, finetune_epochs=1))
    monkeypatch.setattr(trained, "POLARIZE", training.TrainConfig(batch_size=32,
                                                                  max_steps_per_epoch=2))
    first = trained.digits_mlp(tmp_path, fragment_rows=(8,), quick=True)
    again = trained.digits_mlp(tmp_path, fragment_rows=(8,), quick=True)  # loads
    np.testing.assert_array_equal(first.polarized[8]["fc1"]["w"], again.polarized[8]["fc1"]["w"])
    work = tmp_path / "digits_mlp_seed0_quick"
    shutil.copy(work / "baseline.npz", work / "polarized_m8.npz")
    with pytest.raises(training.CheckpointError,
                       match=r"polarized_m8.npz holds stage 'baseline', seed 0, .* but stage "
                             r"'polarized m=8', seed 0, .* was expected.*delete it"):
        trained.digits_mlp(tmp_path, fragment_rows=(8,), quick=True)
    _truncate(work / "admm_m8" / "finetune.npz")
    (work / "polarized_m8.npz").unlink()
    with pytest.raises(training.CheckpointError, match="finetune.npz is damaged"):
        trained.digits_mlp(tmp_path, fragment_rows=(8,), quick=True)


def test_ir_drop_heat_map_loads_and_damage_is_named(tmp_path):
    from reram_emu.experiments import ir_drop

    committed = ROOT / "experiments" / "ir_drop" / "work" / "heat_map.npz"
    assert ir_drop._plot_heat_map(committed, tmp_path / "heat.png")
    damaged = tmp_path / "heat_map.npz"
    damaged.write_bytes(committed.read_bytes()[:1000])
    with pytest.raises(training.CheckpointError, match="heat_map.npz is damaged"):
        ir_drop._plot_heat_map(damaged, tmp_path / "heat.png")


def test_committed_results_pass_the_resume_checks():
    """The checks reject nothing a real run wrote: every committed results.csv passes."""
    import importlib

    folders = sorted(p.parent for p in (ROOT / "experiments").glob("*/results.csv"))
    assert folders
    for folder in folders:
        settings = json.loads((folder / "settings.json").read_text())
        module = importlib.import_module(cli.EXPERIMENTS[settings["experiment"]])
        extra = (settings["model"],) if "model" in settings else ()
        points = module.points(settings["quick"], *extra)
        found = runner._read_finished(folder / "results.csv", points, "cmd")
        assert len(found) == len(points), folder.name
