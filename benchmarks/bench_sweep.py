"""Noise sweeps: one vmapped compilation (``reram_emu.sweeps.sweep``) vs a Python loop.

The digits MLP (64-128-64-10, polarized at fragment 8 by the ADMM polarizer, quick setting of
:func:`reram_emu.experiments.trained.digits_mlp`, cached under ``--work``) reads a fixed batch
of test images (default 64) through FORMS m = 8 (8-bit inputs, 4-bit ADC with an LSB of one
level) at 256 noise settings: 16 log-normal variation sigmas x 16 read-noise sigmas, one key.
Measured side by side in one run, on the same settings and key:

* ``sweep``: one ``jit`` of ``vmap`` over the settings (``sweeps.sweep``);
* ``loop``: a Python loop over the settings calling one jitted single-setting evaluation
  (compiled once too: the noise numbers are traced arguments, so the loop never recompiles).

Both return the correct-image count per setting; the script checks they agree. Prints the
first-call time minus the median steady call (compilation, roughly), and per steady call the
median and spread (min..max) of ``--repeats`` timings, per setting, and the ratio.

    python benchmarks/bench_sweep.py [--images 64] [--repeats 3] [--chunk 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import describe  # noqa: E402 (benchmarks/machine.py, beside this script)
from reram_emu import training
from reram_emu.experiments.trained import digits_mlp, forms_config
from reram_emu.nn import analog
from reram_emu.sweeps import noise_grid, sweep

FRAGMENT = 8


def timed(function, repeats: int) -> tuple[float, np.ndarray]:
    """(first call seconds, steady call seconds per repeat); every call blocks on its result."""
    start = time.perf_counter()
    jax.block_until_ready(function())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - start)
    return first, np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="test images per evaluation")
    parser.add_argument("--repeats", type=int, default=3, help="steady calls timed per method")
    parser.add_argument("--chunk", type=int, default=8,
                        help="settings vmapped together in the sweep (sweep's chunk_size)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "reram_emu_bench_sweep"),
                        help="checkpoint folder of the trained model")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1 or args.chunk < 1:
        parser.error("--images, --repeats and --chunk must be >= 1")
    load_start = os.getloadavg()

    trained = digits_mlp(args.work, fragment_rows=(FRAGMENT,), quick=True)
    model, params = trained.model, trained.polarized[FRAGMENT]
    if args.images > len(trained.data.x_test):
        parser.error(f"--images must be <= {len(trained.data.x_test)}")
    x = jnp.asarray(trained.data.x_test[:args.images], jnp.float32)
    y = jnp.asarray(trained.data.y_test[:args.images])
    config = forms_config(FRAGMENT)
    f = analog(model.apply, config, nonnegative_inputs=True)
    scales = {k: jnp.asarray(v) for k, v in training.calibrate_input_scales(
        model.apply, params, trained.calibration_x, config).items()}

    def count_correct(noise, key):
        program_key, read_key = jax.random.split(key)
        state = f.program(params, x, key=program_key, noise=noise)._replace(scales=scales)
        logits = f.apply(state, params, x, read_key=read_key, noise=noise)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    grid = noise_grid(config, variation_sigma=np.linspace(0.0, 0.3, 16),
                      read_noise_sigma=np.linspace(0.0, 0.15, 16))
    settings = int(grid.variation_sigma.shape[0])
    key = jax.random.key(0)
    keys = key[None]
    # the loop's inputs are sliced before timing (the loop pays only for its calls)
    singles = [jax.tree_util.tree_map(lambda v, i=i: v[i], grid) for i in range(settings)]
    single = jax.jit(count_correct)

    def run_sweep():
        return sweep(count_correct, grid, keys, chunk_size=args.chunk)[:, 0]

    def run_loop():
        return jnp.stack([single(point, key) for point in singles])

    print(describe())
    print(f"load average (1, 5, 15 min) "
          f"at start {tuple(round(v, 2) for v in load_start)}")
    print(f"digits MLP polarized at m={FRAGMENT}, FORMS m={FRAGMENT}, {args.images} images, "
          f"{settings} settings (16 variation x 16 read-noise sigmas), 1 key, "
          f"{args.repeats} repeats, sweep chunk {args.chunk}")
    print(f"{'':28s} {'compile~ s':>10s} {'median s':>9s} {'min..max s':>17s} "
          f"{'ms/setting':>10s}", flush=True)
    medians = {}
    for name, function in [("sweep (one jit of vmaps)", run_sweep),
                           ("loop of jitted calls", run_loop)]:
        first, times = timed(function, args.repeats)
        medians[name] = times
        median = float(np.median(times))
        print(f"{name:28s} {first - median:10.1f} {median:9.2f} {times.min():8.2f}.."
              f"{times.max():<8.2f} {1e3 * median / settings:10.2f}", flush=True)
    sweep_times, loop_times = medians.values()
    swept, looped = np.asarray(run_sweep()), np.asarray(run_loop())
    print(f"loop / sweep time per setting (medians): "
          f"{np.median(loop_times) / np.median(sweep_times):.2f}; extremes "
          f"{loop_times.min() / sweep_times.max():.2f}..{loop_times.max() / sweep_times.min():.2f}")
    print(f"results agree: {bool(np.array_equal(swept, looped))} (max |difference| "
          f"{int(np.max(np.abs(swept - looped)))} images; mean accuracy over the settings "
          f"{swept.mean() / args.images:.4f}); load average at end "
          f"{tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
