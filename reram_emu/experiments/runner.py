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

The runner writes ``results.csv`` (one line per finished point, flushed at once) and
``results.json`` (rows, configuration, package version, command), then ``summary.md``.
``resume=True`` keeps the finished points of an earlier run in the same folder and evaluates
only the rest; without it, earlier results are kept under ``results.<time>.csv``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import __version__

__all__ = ["run_experiment", "point_id", "UserError"]


class UserError(Exception):
    """A mistake in how the command was called: printed without a traceback."""


def point_id(point: dict) -> str:
    """A stable identifier of a point: its sorted parameters."""
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def _read_finished(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    finished = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if "point" in row:
                finished[row["point"]] = row
    return finished


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


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
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns())
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None
                                 else v for k, v in row.items()})
        temporary.replace(self.path)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._rewrite()


def run_experiment(module, out_dir: Path, *, quick: bool = False, resume: bool = False,
                   seed: int = 0, progress: bool = True) -> dict:
    """Run ``module`` (see the module docstring) and write its report folder."""
    start = time.time()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the output folder {out_dir}: {error.strerror or error}")
    csv_path = out_dir / "results.csv"
    settings_path = out_dir / "settings.json"
    settings = {"experiment": module.NAME, "quick": quick, "seed": seed}
    finished: dict[str, dict] = {}
    if resume:
        if settings_path.exists():
            earlier = json.loads(settings_path.read_text())
            if earlier != settings:
                raise UserError(f"{out_dir} holds a run with other settings ({earlier}); "
                                f"resume with the same options or choose another --out")
        finished = _read_finished(csv_path)
    elif csv_path.exists():
        csv_path.rename(out_dir / f"results.{time.strftime('%Y%m%d-%H%M%S')}.csv")
    settings_path.write_text(json.dumps(settings, indent=2))

    points = module.points(quick)
    todo = [p for p in points if point_id(p) not in finished]
    kept = [{**{k: _parse(v) for k, v in finished[point_id(p)].items()}, "point": point_id(p)}
            for p in points if point_id(p) in finished]
    writer = _CsvWriter(csv_path, kept)
    if todo:
        context = module.prepare(quick, seed, out_dir / "work")
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
    command = "python -m reram_emu.experiments run " + module.NAME + (" --quick" if quick else "") \
        + (f" --seed {seed}" if seed else "")
    record = {"experiment": module.NAME, "description": module.DESCRIPTION, "quick": quick,
              "seed": seed, "version": __version__, "command": command,
              "configuration": getattr(module, "configuration", lambda q: {})(quick),
              "wall_time_s": elapsed, "resumed_points": len(points) - len(todo), "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(record, indent=2, default=str))
    (out_dir / "summary.md").write_text(
        f"# {module.NAME}: {module.DESCRIPTION}\n\n{summary.strip()}\n\n"
        f"Command: `{command}` (reram_emu {__version__}); wall time {elapsed:.0f} s"
        f"{' (resumed)' if len(points) != len(todo) else ''}.\n")
    return record
