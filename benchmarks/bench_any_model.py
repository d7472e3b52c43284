"""Emulated evaluation of LeNet-5 on MNIST's 10,000 test images, FORMS m = 8: the any-model
path (``reram_emu.nn.analog`` + ``evaluate_accuracy``: program once per key, read every batch)
against a hand-wired program-once read (LeNet-5's layers written out by hand: im2col, then
``reram_emu.read`` of pre-programmed layers, no transform), and the float evaluation of the
same images. Side by side in one run, interleaved repetition by repetition; medians,
min..max, and the share of programming vs reading.

The model is the package's LeNet-5 (a plain ``apply(params, x)``), so the transform traces the
same products the hand-wired loop reads; with the same keys the accuracies must be identical
(checked). Weights: He-initialized, projected onto the polarized set
(``on_violation="project"``): speed does not depend on training. The "before" of
``benchmarks/results/bench_any_model_cpu.txt`` (``training.evaluate_emulated``, which
programmed every layer again for every batch) was deleted when the package moved onto the
transform; that file keeps its measurement.

    python benchmarks/bench_any_model.py [--images 10000] [--batch 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import describe  # noqa: E402 (benchmarks/machine.py, beside this script)
import reram_emu as rx
from reram_emu.crossbar import read
from reram_emu.datasets import load_dataset
from reram_emu.layers import ConvSpec, im2col, max_pool
from reram_emu.models import lenet5
from reram_emu.nn import (analog, evaluate_accuracy, layer_config, program_and_read_keys,
                          program_weights)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = load_dataset("mnist")
    x, y = data.x_test[:args.images], data.y_test[:args.images]
    model = lenet5()
    params = model.init(jax.random.key(0))
    config = rx.preset("forms", mapping=rx.MappingConfig(scheme="polarized",
                                                         on_violation="project"))
    key = jax.random.key(1)
    f = analog(model.apply, config, nonnegative_inputs=True)
    batch = jnp.asarray(x[:args.batch])

    float_apply = jax.jit(model.apply)

    def float_eval():
        hits = [np.asarray(jnp.argmax(float_apply(params, jnp.asarray(x[i:i + args.batch])),
                                      -1) == y[i:i + args.batch])
                for i in range(0, len(x), args.batch)]
        return np.concatenate(hits).mean()

    # hand-wired program-once: LeNet-5's layers written out, reading pre-programmed layers
    names = model.layer_names
    specs = dict(model.layers)
    configs = {n: layer_config(config, specs[n].out_features) for n in names}
    program_key, read_key = program_and_read_keys(key)

    @jax.jit
    def hand_program(params):
        return {n: program_weights(params[n]["w"], configs[n],
                                   jax.random.fold_in(program_key, i))[0]
                for i, n in enumerate(names)}

    @jax.jit
    def hand_batch(layers, xb, index):
        batch_key = jax.random.fold_in(read_key, index)

        h = xb
        for i, name in enumerate(names):
            if isinstance(specs[name], ConvSpec):
                patches = im2col(h, specs[name])
                b, ho, wo, k = patches.shape
                out = read(layers[name], patches.reshape(b * ho * wo, k),
                           key=jax.random.fold_in(batch_key, i))[0]
                h = max_pool(jax.nn.relu(out.reshape(b, ho, wo, -1) + params[name]["b"]), 2)
            else:
                h = h.reshape(h.shape[0], -1)
                h = read(layers[name], h, key=jax.random.fold_in(batch_key, i))[0] \
                    + params[name]["b"]
                h = jax.nn.relu(h) if i < len(names) - 1 else h
        return jnp.argmax(h, -1)

    def hand_eval():
        layers = hand_program(params)
        hits = [np.asarray(hand_batch(layers, jnp.asarray(x[i:i + args.batch]), b)
                           == y[i:i + args.batch])
                for b, i in enumerate(range(0, len(x), args.batch))]
        return np.concatenate(hits).mean()

    program = jax.jit(lambda p: f.program(p, batch, key=program_key))
    apply = jax.jit(lambda s, p, xb, k: f.apply(s, p, xb, read_key=k))

    methods = {
        "float (jit)": float_eval,
        "nn.evaluate_accuracy (after)": lambda: evaluate_accuracy(
            f, params, x, y, keys=key[None], batch_size=args.batch).mean,
        "hand-wired program once": hand_eval,
        "  after: programming only": lambda: program(params),
        "  after: one batch read": lambda: apply(program(params), params, batch,
                                                 jax.random.fold_in(read_key, 0)),
    }
    first, results = {}, {}
    for name, fn in methods.items():  # first call: compilation included
        first[name], results[name] = timed(fn)
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn)[0])

    acc = {n: float(results[n]) for n in list(methods)[:3]}
    print(describe())
    print(f"# LeNet-5, MNIST test images: "
          f"{len(x)}, batch {args.batch}, FORMS m = 8, {args.repeats} repeats")
    print(f"{'method':32s} {'first_s':>8s} {'median_s':>9s} {'min_s':>8s} {'max_s':>8s} "
          f"{'x float':>8s}")
    base = statistics.median(times["float (jit)"])
    for name in methods:
        t = times[name]
        print(f"{name:32s} {first[name]:8.2f} {statistics.median(t):9.3f} {min(t):8.3f} "
              f"{max(t):8.3f} {statistics.median(t) / base:8.1f}")
    print("accuracies:", {n: round(a, 4) for n, a in acc.items()})
    same = acc["nn.evaluate_accuracy (after)"] == acc["hand-wired program once"]
    print("the transform and the hand-wired read give identical accuracies:", same)
    program_s = statistics.median(times["  after: programming only"])
    read_s = statistics.median(times["nn.evaluate_accuracy (after)"]) - program_s
    print(f"after: programming {program_s:.3f} s, reading {read_s:.3f} s "
          f"({100 * program_s / (program_s + read_s):.1f} % programming)")


if __name__ == "__main__":
    main()
