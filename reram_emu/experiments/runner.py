"""Running an experiment: points, results written as they finish, resume, reports.

An experiment is a module with:

* ``NAME`` and ``DESCRIPTION`` (one line);
* ``points(quick: bool) -> list[dict]``: the parameter points (JSON-serializable values);
* ``group(point) -> hashable`` (optional): points of one group are evaluated together
  (e.g. one vmapped sweep over noise values: they share a compilation);
* ``prepare(quick, seed, work_dir) -> context``: heavy set-up (data, trained model), may cache
  its work (checkpoints) under ``work_dir``;
* ``evaluate(context, points, seed) -> list[dict]``: the metrics of each point;
* ``report(rows, out_dir, quick) -> str``: writes plots (PNG) and returns the Markdown summary.
* ``MODEL_OPTIONS`` (optional): ``{name: one line}``, the networks ``--model`` may name; such
  a module's ``points``, ``prepare`` and ``configuration`` take ``model`` (None: its default)
  as a last argument, and the name is recorded in ``settings.json``.

The runner writes ``results.csv`` (one line per finished point, written at once) and
``results.json`` (rows, configuration, package version, command), then ``summary.md``; every
file it writes (and every checkpoint, :func:`reram_emu.training.save_checkpoint`) is written
atomically: a temporary file in the same folder, flushed and fsync-ed, then renamed over the
old one, so an interrupted run (Ctrl-C, a kill) leaves each file either old or new, never cut.
``resume=True`` keeps the finished points of an earlier run in the same folder and evaluates
only the rest; without it, earlier results are kept under ``results.<time>.csv``.

On resume nothing damaged is trusted; each of these stops the run with a :class:`UserError`
that names the file and what to do: ``settings.json`` unreadable or holding other settings;
``results.csv`` without its ``settings.json``, not UTF-8 text, not CSV or without a ``point``
column; a row with more or fewer fields than the header, whose ``point`` is not one of this
experiment's points or disagrees with the row's parameter columns; a field that reads as NaN or
infinity (also inside a list); a column whose values are of another kind (number, text, bool,
list, dict; empty fields and ``null`` match anything) than on the rows above; a point twice
with different values. An experiment that has no value for a metric should return ``None``, not
NaN. A damaged checkpoint, or one another stage or configuration wrote
(:class:`reram_emu.training.CheckpointError`), is reported the same way.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import __version__
from ..training import CheckpointError

__all__ = ["run_experiment", "point_id", "UserError"]


class UserError(Exception):
    """A mistake in how the command was called: printed without a traceback."""


def point_id(point: dict) -> str:
    """A stable identifier of a point: its sorted parameters."""
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _kind(value) -> str | None:
    """The kind of a parsed field (None: matches any kind)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "bool"
    return {int: "number", float: "number", list: "list", dict: "dict"}.get(type(value), "text")


def _finite(value) -> bool:
    """False for a NaN or infinite number (also the text 'nan', 'inf', inside lists, dicts)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, dict)):
        return all(map(_finite, value.values() if isinstance(value, dict) else value))
    return True


def _read_finished(path: Path, points: list[dict], fresh: str) -> dict[str, dict]:
    """The rows of an earlier ``results.csv`` by point id, each checked (module docstring)."""
    if not path.exists():
        return {}
    redo = f"delete it, or rerun without --resume ({fresh}), to recompute every point"
    try:
        reader = csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""))
        header = reader.fieldnames or []
        rows, line = [], 2
        for row in reader:  # (first line of the row, row)
            rows.append((line, row))
            line = reader.line_num + 1
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is damaged (not UTF-8 text: {error}); {redo}") from None
    except (OSError, csv.Error) as error:
        raise UserError(f"{path} is damaged ({error}); {redo}") from None
    if "point" not in header:
        what = f"no 'point' column in its header {header}" if header else "empty"
        raise UserError(f"{path} is damaged ({what}); {redo}")

    def bad(line: int, what: str) -> UserError:
        return UserError(f"{path} line {line}: {what}; delete that line to recompute its "
                         f"point, or rerun without --resume ({fresh}) to recompute all")

    known = {point_id(p): json.loads(point_id(p)) for p in points}  # tuples as lists
    checked = []
    for line, row in rows:
        if None in row:
            raise bad(line, f"{len(header) + len(row[None])} fields, the header has "
                            f"{len(header)}")
        missing = [column for column, value in row.items() if value is None]
        if missing:
            raise bad(line, f"{len(header) - len(missing)} fields, the header has "
                            f"{len(header)} (no {', '.join(missing)})")
        try:
            pid = point_id(json.loads(row["point"]))
        except json.JSONDecodeError:
            pid = row["point"]
        if pid not in known:
            raise bad(line, f"its point {row['point']!r} is not one of this experiment's points")
        values = {k: _parse(v) for k, v in row.items() if k != "point" and v != ""}
        for key, value in known[pid].items():
            if key in values and values[key] != value:
                raise bad(line, f"column {key!r} is {row[key]!r} but its point says {value!r}")
        for key, value in values.items():
            if not _finite(value):
                raise bad(line, f"column {key!r} is {row[key]!r}, not a finite number")
        checked.append((line, pid, values, row))
    kinds: dict[str, Counter] = {}
    for _, _, values, _ in checked:
        for key, value in values.items():
            if _kind(value):
                kinds.setdefault(key, Counter())[_kind(value)] += 1
    finished: dict[str, dict] = {}
    lines_of: dict[str, int] = {}
    for line, pid, values, row in checked:
        for key, value in values.items():
            usual = kinds[key].most_common(1)[0][0] if key in kinds else None
            if _kind(value) not in (None, usual):
                raise bad(line, f"column {key!r} is {row[key]!r}, of kind {_kind(value)}, "
                                f"where the other rows hold a {usual}")
        if pid in finished and finished[pid] != values:
            raise bad(line, f"point {pid} is also on line {lines_of[pid]}, with other values")
        finished[pid], lines_of[pid] = values, line
    return finished


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder (flushed, fsync-ed,
    renamed over ``path``): an interruption leaves the old file or the new one."""
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False, newline="",
                                         encoding="utf-8")
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class _CsvWriter:
    """Appends rows to results.csv, adding columns (by rewriting) when new ones appear."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path, self.rows = path, list(rows)
        self._rewrite()

    def _columns(self) -> list[str]:
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        return columns

    def _rewrite(self) -> None:
        text = io.StringIO()
        # no rows yet (a run interrupted before its first point): the header alone, so that
        # --resume reads "nothing finished" instead of refusing an empty (damaged) file
        writer = csv.DictWriter(text, fieldnames=self._columns() or ["point"])
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None
                             else v for k, v in row.items()})
        _write_atomic(self.path, text.getvalue())

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._rewrite()


def _read_settings(path: Path, csv_path: Path, settings: dict, fresh: str) -> None:
    """Check on resume that ``path`` holds ``settings`` (see the module docstring)."""
    if not path.exists():
        if csv_path.exists():
            raise UserError(f"{csv_path} has no {path.name} beside it, so what produced it is "
                            f"unknown; rerun without --resume ({fresh}) to recompute")
        return
    try:
        earlier = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is damaged ({error}); rerun without --resume ({fresh}) "
                        f"to recompute (the earlier results.csv is kept aside)") from None
    if earlier != settings:
        raise UserError(f"{path.parent} holds a run with other settings ({earlier}); "
                        f"resume with the same options or choose another --out")


def run_experiment(module, out_dir: Path, *, quick: bool = False, resume: bool = False,
                   seed: int = 0, progress: bool = True, model: str | None = None) -> dict:
    """Run ``module`` (see the module docstring) and write its report folder; ``model`` names
    one of the module's ``MODEL_OPTIONS`` (None: the module's default)."""
    options = getattr(module, "MODEL_OPTIONS", None)
    if model is not None and options is None:
        raise UserError(f"experiment {module.NAME!r} takes no --model")
    if model is not None and model not in options:
        raise UserError(f"unknown --model {model!r} for {module.NAME}; known: "
                        f"{', '.join(options)}")
    try:
        return _run(module, Path(out_dir), quick, resume, seed, progress, options, model)
    except CheckpointError as error:
        raise UserError(str(error)) from None


def _run(module, out_dir: Path, quick: bool, resume: bool, seed: int, progress: bool,
         options, model) -> dict:
    start = time.time()
    extra = () if options is None else (model,)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"the output folder {out_dir} is an existing file; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the output folder {out_dir}: "
                        f"{error.strerror or error}; choose another --out") from None
    command = "python -m reram_emu.experiments run " + module.NAME + (" --quick" if quick else "") \
        + (f" --seed {seed}" if seed else "") + (f" --model {model}" if model else "")
    fresh = f"{command} --out {out_dir}"
    csv_path = out_dir / "results.csv"
    settings_path = out_dir / "settings.json"
    settings = {"experiment": module.NAME, "quick": quick, "seed": seed}
    if options is not None:
        settings["model"] = model
    points = module.points(quick, *extra)
    finished: dict[str, dict] = {}
    if resume:
        _read_settings(settings_path, csv_path, settings, fresh)
        finished = _read_finished(csv_path, points, fresh)
    elif csv_path.exists():
        csv_path.rename(out_dir / f"results.{time.strftime('%Y%m%d-%H%M%S')}.csv")
    _write_atomic(settings_path, json.dumps(settings, indent=2))

    todo = [p for p in points if point_id(p) not in finished]
    kept = [{**finished[point_id(p)], "point": point_id(p)}
            for p in points if point_id(p) in finished]
    writer = _CsvWriter(csv_path, kept)
    if todo:
        context = module.prepare(quick, seed, out_dir / "work", *extra)
        group = getattr(module, "group", lambda point: 0)
        batches: dict[Any, list[dict]] = {}
        for point in todo:
            batches.setdefault(group(point), []).append(point)
        bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=module.NAME,
                   unit="point", disable=not progress, file=sys.stderr)
        for batch in batches.values():
            for point, metrics in zip(batch, module.evaluate(context, batch, seed)):
                writer.add({**point, **metrics, "point": point_id(point)})
                bar.update(1)
        bar.close()
    rows = [{k: v for k, v in row.items() if k != "point"} for row in writer.rows]
    summary = module.report(rows, out_dir, quick)
    elapsed = time.time() - start
    record = {"experiment": module.NAME, "description": module.DESCRIPTION, "quick": quick,
              "seed": seed, "version": __version__, "command": command,
              "configuration": getattr(module, "configuration", lambda q, *a: {})(quick, *extra),
              "wall_time_s": elapsed, "resumed_points": len(points) - len(todo), "rows": rows}
    _write_atomic(out_dir / "results.json", json.dumps(record, indent=2, default=str))
    _write_atomic(out_dir / "summary.md",
                  f"# {module.NAME}: {module.DESCRIPTION}\n\n{summary.strip()}\n\n"
                  f"Command: `{command}` (reram_emu {__version__}); wall time {elapsed:.0f} s"
                  f"{' (resumed)' if len(points) != len(todo) else ''}.\n")
    return record
