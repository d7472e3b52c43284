"""``python -m reram_emu.experiments [list | run NAME [--quick] [--out DIR] [--resume]
[--seed N] [--model NETWORK]]``. With no arguments: the embedded default study.

Every run keeps JAX's compiled programs in a persistent cache
(:func:`reram_emu.cache.enable_compilation_cache`), so the next run skips most compilation;
``RERAM_EMU_COMPILE_CACHE=DIR`` moves it, ``RERAM_EMU_COMPILE_CACHE=0`` switches it off."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path

from ..cache import enable_compilation_cache
from .runner import UserError, run_experiment

EXPERIMENTS = {
    "layer_noise": "reram_emu.experiments.layer_noise",
    "cost": "reram_emu.experiments.cost",
    "adc_resolution": "reram_emu.experiments.adc_resolution",
    "mappings": "reram_emu.experiments.mappings",
    "ir_drop": "reram_emu.experiments.ir_drop",
    "zero_skip": "reram_emu.experiments.zero_skip",
    "noise_sensitivity": "reram_emu.experiments.noise_sensitivity",
    "polarize": "reram_emu.experiments.polarize",
    "forms_flow": "reram_emu.experiments.forms_flow",
}
DEFAULT = "noise_sensitivity"


def load(name: str):
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))} "
                        f"(see `python -m reram_emu.experiments list`)")
    return importlib.import_module(EXPERIMENTS[name])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reram_emu.experiments",
        description="Run reram_emu experiments. With no arguments, runs the default study "
                    f"({DEFAULT}, quick setting) into reports/{DEFAULT}/.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="name every experiment with one line each")
    run = commands.add_parser("run", help="run one experiment")
    run.add_argument("name", help="experiment name (see `list`)")
    run.add_argument("--quick", action="store_true", help="small setting, minutes on 2 cores")
    run.add_argument("--out", type=Path, default=None,
                     help="report folder (default: reports/NAME)")
    run.add_argument("--resume", action="store_true",
                     help="keep finished points in the report folder and run only the rest")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--model", default=None,
                     help="the network, for experiments that offer several (see `list`)")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name in sorted(EXPERIMENTS):
                module = load(name)
                print(f"{name:20s} {module.DESCRIPTION}")
                for option, line in getattr(module, "MODEL_OPTIONS", {}).items():
                    print(f"{'':20s}   --model {option}: {line}")
            return 0
        if args.command is None:
            name, quick, out, resume, seed, progress = DEFAULT, True, None, True, 0, True
            model = None
        else:
            name, quick, out, resume = args.name, args.quick, args.out, args.resume
            seed, progress, model = args.seed, not args.no_progress, args.model
        if seed < 0:
            raise UserError(f"--seed must be >= 0, got {seed}")
        module = load(name)
        try:
            enable_compilation_cache()
        except ValueError as error:  # a cache is a speed-up: run without it, say why
            print(f"warning: no compilation cache: {error}", file=sys.stderr)
        out = Path("reports") / name if out is None else out
        run_experiment(module, out, quick=quick, resume=resume, seed=seed, progress=progress,
                       model=model)
        print(f"report: {out / 'summary.md'} (results.csv, results.json, plots)")
        return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished points are saved; rerun with --resume", file=sys.stderr)
        return 130


def _interrupted(signum, frame):
    """The first Ctrl-C stops the run; any further one is ignored: it would interrupt JAX's
    exit-time cleanup half-way (an LLVM abort or a segfault, measured)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def entry() -> None:
    """``python -m reram_emu.experiments``: :func:`main` in a process of its own. After Ctrl-C
    (exit status 130) the process ends at once, skipping the interpreter's and JAX's exit-time
    cleanup: XLA may still be running the interrupted work on its threads, and tearing its
    backend down under it crashed the process (SIGSEGV, exit -11). Nothing is lost: every
    result and checkpoint is already written atomically."""
    signal.signal(signal.SIGINT, _interrupted)
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)


if __name__ == "__main__":
    entry()
