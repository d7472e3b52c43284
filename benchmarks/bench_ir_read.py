"""Read cost with IR drop on vs off, once programmed (FORMS preset, 512 x 512, batch 256).

With wires, programming solves every crossbar's transfer matrix once; every later read uses its
rows exactly as the ideal read uses the conductances, so the read itself should cost the same.
Prints the programming time with wires, and both reads' median and spread, measured
interleaved in one run.

    python benchmarks/bench_ir_read.py [--size 512] [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from machine import describe  # noqa: E402 (benchmarks/machine.py, beside this script)
import reram_emu as rx
from reram_emu.circuit import WireConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(describe())
    rng = np.random.default_rng(0)
    config = rx.preset("forms")
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(args.size // 8, args.size)), 8, axis=0)
    weights = np.abs(rng.normal(size=(args.size, args.size))) * signs
    x = rng.random((args.batch, args.size)).astype(np.float32)
    ideal = rx.program(rx.map_weights(weights, config))
    wired_mapped = rx.map_weights(weights, config.replace(wires=WireConfig(1.0, 1.0)))
    program = jax.jit(rx.program)
    jax.block_until_ready(program(wired_mapped))
    start = time.perf_counter()
    wired = jax.block_until_ready(program(wired_mapped))
    programming = time.perf_counter() - start
    read = jax.jit(lambda layer, x: rx.read(layer, x).outputs)
    times = {"ideal wires": [], "IR drop (1 ohm)": []}
    for layer in (ideal, wired):
        jax.block_until_ready(read(layer, x))
    for _ in range(args.repeats):
        for name, layer in (("ideal wires", ideal), ("IR drop (1 ohm)", wired)):
            start = time.perf_counter()
            jax.block_until_ready(read(layer, x))
            times[name].append(time.perf_counter() - start)
    print(f"{args.size} x {args.size} FORMS layer, batch {args.batch}: programming with wires "
          f"(all transfer matrices, float32) {programming:.2f} s")
    base = np.median(times["ideal wires"])
    for name, values in times.items():
        values = np.asarray(values)
        print(f"read, {name:16s} median {np.median(values):.3f} s  "
              f"[{values.min():.3f}..{values.max():.3f}]  x{np.median(values) / base:.2f}")


if __name__ == "__main__":
    main()
