"""A noise sweep on one process vs two (``jax.distributed`` on localhost, gloo collectives).

The sweep (``reram_emu.sweeps.sweep``): a 128 x 128 polarized layer on FORMS m = 8 (8-bit
inputs), programmed with device variation and read with read noise, 64 input vectors, over
``--points`` settings (variation sigma x read-noise sigma) and ``--keys`` keys. Measured in
one run, each case in fresh processes:

* ``1 process, 1 core``: one process pinned to core 0 (``os.sched_setaffinity``);
* ``2 processes, 1 core each``: the same sweep sharded over two processes pinned to cores 0
  and 1 (``devices=jax.devices()``), every process receiving the whole result;
* ``1 process, all cores``: one unpinned process (XLA's own threads), for reference.

Each process times its sweep after a first (compiling) call: the median and spread of
``--repeats`` steady calls; for two processes the slower process's times. Ratios are of
medians from this run. The two-process result is checked equal to the one-process result.

    python benchmarks/bench_distributed.py [--points 64] [--keys 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    import jax
    if args.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                                   num_processes=args.processes, process_id=args.process,
                                   initialization_timeout=120)
    import reram_emu as rx
    from reram_emu.sweeps import noise_grid, sweep

    rng = np.random.default_rng(0)
    config = rx.preset("forms").replace(inputs=rx.InputConfig(bits=8))
    m = config.geometry.fragment_rows
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(128 // m, 128)), m, axis=0)
    weights = (np.abs(rng.normal(size=(128, 128))) * signs).astype(np.float32)
    x = rng.random((64, 128)).astype(np.float32)
    mapped = rx.map_weights(weights, config)
    exact = x @ weights

    def evaluate(noise, key):
        program_key, read_key = jax.random.split(key)
        layer = rx.program(mapped, program_key, noise)
        outputs = rx.read(layer, x, read_key, noise).outputs
        return jax.numpy.linalg.norm(outputs - exact) / np.linalg.norm(exact)

    side = int(round(args.points ** 0.5))
    grid = noise_grid(config, variation_sigma=np.linspace(0, 0.2, side),
                      read_noise_sigma=np.linspace(0, 0.05, args.points // side))
    keys = jax.random.split(jax.random.key(0), args.keys)

    def run():
        return jax.block_until_ready(sweep(evaluate, grid, keys, chunk_size=args.chunk,
                                           devices=jax.devices()))

    start = time.perf_counter()
    result = run()
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"first_s": first, "times_s": times,
                      "result": np.asarray(result).tolist()}), flush=True)
    if args.processes > 1:
        jax.distributed.shutdown()


def launch(args, processes: int, pinned: bool) -> dict:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = []
    for i in range(processes):
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--processes",
                   str(processes), "--process", str(i), "--port", str(port),
                   "--points", str(args.points), "--keys", str(args.keys),
                   "--repeats", str(args.repeats), "--chunk", str(args.chunk)]
        if pinned:
            command += ["--core", str(i % os.cpu_count())]
        procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}):\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    times = np.max([r["times_s"] for r in reports], axis=0)  # the slower process per repeat
    return {"first": max(r["first_s"] for r in reports), "times": times,
            "result": np.asarray(reports[0]["result"]),
            "agree": all(np.array_equal(r["result"], reports[0]["result"]) for r in reports)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=64, help="noise settings")
    parser.add_argument("--keys", type=int, default=4, help="keys per setting")
    parser.add_argument("--repeats", type=int, default=5, help="steady sweeps timed per case")
    parser.add_argument("--chunk", type=int, default=8, help="sweep's chunk_size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--process", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe
    print(describe())
    if os.cpu_count() < 2:
        raise SystemExit("needs at least 2 cores")
    side = int(round(args.points ** 0.5))
    print(f"sweep: 128 x 128 FORMS m=8 layer, 64 inputs, {side * (args.points // side)} "
          f"settings x {args.keys} keys, chunk {args.chunk}; {args.repeats} steady sweeps per "
          f"case (median, min..max)\n")
    cases = {"1 process, 1 core": (1, True), "2 processes, 1 core each": (2, True),
             "1 process, all cores": (1, False)}
    measured = {name: launch(args, *case) for name, case in cases.items()}
    one = measured["1 process, 1 core"]
    print("| case | first call (s) | steady sweep (s) | speed-up vs 1 process, 1 core |")
    print("|---|---|---|---|")
    for name, r in measured.items():
        med = float(np.median(r["times"]))
        print(f"| {name} | {r['first']:.2f} | {med:.3f} ({r['times'].min():.3f}.."
              f"{r['times'].max():.3f}) | {float(np.median(one['times'])) / med:.2f}x |")
    two = measured["2 processes, 1 core each"]
    same = two["agree"] and np.array_equal(two["result"], one["result"])
    print(f"\ntwo-process result equal to the one-process result on every process: {same}")


if __name__ == "__main__":
    main()
