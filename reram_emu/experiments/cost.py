"""The ``cost`` experiment: hardware cost of a trained model on FORMS (fragment 4, 8, 16),
ISAAC and PRIME (the study itself is :mod:`reram_emu.experiments.cost_study`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import cost_study

NAME = "cost"
DESCRIPTION = "hardware cost (conversions, energy, area, GOPs/W, frames/s) FORMS vs ISAAC vs PRIME"


def points(quick: bool) -> list[dict]:
    return [{"study": "cost"}]


def prepare(quick: bool, seed: int, work_dir: Path):
    return {"work": Path(work_dir), "quick": quick}


def evaluate(context, batch, seed):
    report = cost_study.run(context["work"], context["quick"], seed)
    rows = []
    for _ in batch:
        metrics = {f"{name} GOPs/W": design["gops_per_w"]
                   for name, design in report["designs"].items() if "gops_per_w" in design}
        metrics["seconds"] = report["seconds"]
        rows.append(metrics)
    return rows


def report(rows, out_dir: Path, quick: bool) -> str:
    work = Path(out_dir) / "work"
    for name in ("cost_comparison.png", "results.md"):
        if (work / name).exists():
            shutil.copy(work / name, Path(out_dir) / ("cost_study.md" if name == "results.md"
                                                      else name))
    details = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() \
        else {}
    return ("Full tables: `cost_study.md` (per-conversion energies, FORMS m=8 vs ISAAC peak "
            "efficiency and the assumptions the paper leaves open, zero-skip savings on real "
            "activations, every design on the trained model).\n\n![cost](cost_comparison.png)\n\n"
            f"Model: {details.get('model', '?')}.")
