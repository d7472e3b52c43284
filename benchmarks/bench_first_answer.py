"""Time to first answer: a fresh process's first IR-drop read, without and with the
persistent compilation cache (``reram_emu.cache``).

The program: import reram_emu, map a 128 x 128 polarized layer on FORMS m = 8 with 1 ohm
wires (IR drop: the exact circuit solve), program it, read a batch of 16 inputs, print the
outputs' sum. Its wall time is measured from before the interpreter starts to its exit
(start-up, imports, compilation, the solve), in fresh processes, in one run:

* ``no cache``: ``RERAM_EMU_COMPILE_CACHE=0``;
* ``cache, first process``: an empty cache folder (compiles and writes the cache);
* ``cache, second process``: the folder the first process filled (loads the programs).

Each case ``--repeats`` times (the cold case with a fresh folder each time); median and
spread. ``--study`` also times the default study's quick setting
(``python -m reram_emu.experiments run noise_sensitivity --quick``) without the cache, with
a cold one and with a warm one, once each. The outputs are checked equal across cases.

    python benchmarks/bench_first_answer.py [--repeats 3] [--study]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = """
import jax, numpy as np
import reram_emu as rx
from reram_emu.cache import enable_compilation_cache
from reram_emu.circuit import WireConfig
enable_compilation_cache()
rng = np.random.default_rng(0)
config = rx.preset("forms").replace(wires=WireConfig(1.0, 1.0))
signs = np.repeat(rng.choice([-1.0, 1.0], size=(16, 128)), 8, axis=0)
weights = np.abs(rng.normal(size=(128, 128))) * signs
layer = rx.program(rx.map_weights(weights, config))
out = rx.read(layer, rng.random((16, 128)).astype(np.float32)).outputs
print(repr(float(np.asarray(out, np.float64).sum())))
"""


def timed(command, cache: str) -> tuple[float, str]:
    env = dict(os.environ, RERAM_EMU_COMPILE_CACHE=cache)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout.strip().splitlines()[-1]


def cases(command, repeats: int) -> dict:
    out = {"no cache": [], "cache, first process": [], "cache, second process": []}
    answers = set()
    for _ in range(repeats):
        seconds, answer = timed(command, "0")
        out["no cache"].append(seconds)
        answers.add(answer)
        with tempfile.TemporaryDirectory() as folder:
            for name in ("cache, first process", "cache, second process"):
                seconds, answer = timed(command, folder)
                out[name].append(seconds)
                answers.add(answer)
    return out, answers


def table(title: str, measured: dict) -> None:
    print(f"\n{title}\n\n| case | wall time (s), median (min..max) | vs no cache |\n|---|---|---|")
    base = float(np.median(measured["no cache"]))
    for name, values in measured.items():
        v = np.asarray(values)
        print(f"| {name} | {np.median(v):.2f} ({v.min():.2f}..{v.max():.2f}) | "
              f"{base / np.median(v):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--study", action="store_true",
                        help="also time the default study's quick setting (minutes)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe
    print(describe())
    measured, answers = cases([sys.executable, "-c", PROGRAM], args.repeats)
    table("First IR-drop read of a 128 x 128 FORMS layer (1 ohm wires) in a fresh process, "
          f"{args.repeats} processes per case", measured)
    print(f"\nsame outputs in every case: {len(answers) == 1}")
    if args.study:
        with tempfile.TemporaryDirectory() as out:
            def study(name):
                return [sys.executable, "-m", "reram_emu.experiments", "run",
                        "noise_sensitivity", "--quick", "--no-progress", "--out",
                        os.path.join(out, name)]
            runs = {"no cache": [timed(study("a"), "0")[0]]}
            with tempfile.TemporaryDirectory() as folder:
                runs["cache, first process"] = [timed(study("b"), folder)[0]]
                runs["cache, second process"] = [timed(study("c"), folder)[0]]
        table("The default study, quick setting (`run noise_sensitivity --quick`), once per "
              "case", runs)


if __name__ == "__main__":
    main()
