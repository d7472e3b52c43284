"""Every benchmark of ``benchmarks/`` with small repeats, on whatever device JAX sees (a GPU
session's one prepared call), collected into one report.

Runs each script below in its own process with settings sized so the whole check takes a few
minutes on a GPU machine, records its exit status and wall time, and prints (and with
``--out``, writes) one Markdown report: the machine, a table of the benchmarks (status, wall
time, the arguments used), then each benchmark's own table as it printed it. A benchmark
that fails is reported with the end of its error and the others still run.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check_<device>.md]
        [--only bench_read,bench_circuit] [--timeout 240]

The device check of issue 16: with the ``device`` tool, one call
``PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --out $OUT/gpu_check.md``, then commit
the report under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: benchmark -> small arguments (every script's own defaults are the CPU measurements')
CHECKS = {
    "bench_read": ["--size", "512", "--batch", "256", "--repeats", "3"],
    "bench_ir_read": ["--size", "512", "--batch", "256", "--repeats", "3"],
    "bench_circuit": ["--sizes", "64,128,256,512", "--repeats", "3", "--budget-s", "5"],
    "bench_sweep": ["--images", "64", "--repeats", "2"],
    "bench_any_model": ["--images", "2000", "--batch", "1000", "--repeats", "2"],
    "bench_first_answer": ["--repeats", "1"],
    "bench_distributed": ["--points", "16", "--keys", "2", "--repeats", "2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds per benchmark before it is stopped")
    args = parser.parse_args()
    chosen = list(CHECKS) if args.only is None else args.only.split(",")
    unknown = [name for name in chosen if name not in CHECKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {', '.join(CHECKS)}")
    sys.path.insert(0, HERE)
    from machine import describe
    lines = ["# benchmarks/gpu_check.py", "", describe(), ""]
    sections, rows = [], []
    for name in chosen:
        command = [sys.executable, os.path.join(HERE, f"{name}.py"), *CHECKS[name]]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=args.timeout)
            status = "ok" if done.returncode == 0 else f"failed ({done.returncode})"
            text = done.stdout if done.returncode == 0 else done.stdout + done.stderr[-2000:]
        except subprocess.TimeoutExpired as stopped:
            status, text = f"stopped after {args.timeout:.0f} s", (stopped.stdout or b"")
            text = text.decode() if isinstance(text, bytes) else text
        seconds = time.perf_counter() - start
        rows.append(f"| {name} | {status} | {seconds:.0f} | `{' '.join(CHECKS[name])}` |")
        body = "\n".join(line for line in text.strip().splitlines()
                         if not line.startswith("machine:"))
        sections += [f"## {name}", "", "```", body, "```", ""]
        print(f"{name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    lines += ["| benchmark | status | wall time (s) | arguments |", "|---|---|---|---|", *rows,
              "", *sections]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
