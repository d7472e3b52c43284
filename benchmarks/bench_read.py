"""Read-kernel throughput: ADC conversions emulated per second, FORMS preset.

A 512 x 512 polarized layer, batch 256, 16-bit inputs, fragment 8, 2-bit cells, 4-bit ADC:
256 x 16 x 64 x 2048 = 5.4e8 conversions per read. Measured side by side in one run:

* the emulated read (jit), without and with read noise;
* the ideal float32 matmul of the same shape (the ratio is what emulation costs);
* a plain einsum over fragments (every bit plane and fragment materialized, then ADC and sums),
  the straightforward implementation the read kernel replaces.

Prints the median and the spread (min..max) of ``--repeats`` timings.

    python benchmarks/bench_read.py [--size 512] [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import describe  # noqa: E402 (benchmarks/machine.py, beside this script)
import reram_emu as rx
from reram_emu.config import DeviceConfig


def timed(function, *args, repeats: int) -> np.ndarray:
    jax.block_until_ready(function(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def plain_einsum_read(config, size):
    """Straightforward emulation: all bit planes x fragments x slice columns in one einsum per
    chunk of 16 rows, then the ADC, signs and shift-add. Same arithmetic as the kernel."""
    m, bits = config.geometry.fragment_rows, config.inputs.bits

    @jax.jit
    def run(levels, sign, x_int):
        def chunk(x):
            planes = ((x[:, None, :] >> jnp.arange(bits)[None, :, None]) & 1).astype(jnp.float32)
            planes = planes.reshape(x.shape[0], bits, size // m, m)
            sums = jnp.einsum("bkfm,fmc->bkfc", planes, levels)
            codes = jnp.clip(jnp.round(sums / 2.0), 0, 15) * 2.0
            signed = codes * sign[None, None]
            return jnp.einsum("bkfc,k->bc", signed, 2.0 ** jnp.arange(bits))
        return jax.lax.map(chunk, x_int.reshape(-1, 16, size)).reshape(x_int.shape[0], -1)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size, batch = args.size, args.batch

    rng = np.random.default_rng(0)
    config = rx.preset("forms")
    m = config.geometry.fragment_rows
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(size // m, size)), m, axis=0)
    weights = np.abs(rng.normal(size=(size, size))) * signs
    x = jnp.asarray(rng.random((batch, size)), jnp.float32)

    layer = rx.program(rx.map_weights(weights, config))
    noisy_config = config.replace(device=DeviceConfig(read_noise_sigma=0.02))
    noisy_layer = rx.program(rx.map_weights(weights, noisy_config))
    read = jax.jit(lambda layer, x: rx.read(layer, x).outputs)
    read_noisy = jax.jit(lambda layer, x, key: rx.read(layer, x, key).outputs)
    conversions = int(rx.read(layer, x).counts.adc_conversions)
    w32 = jnp.asarray(weights, jnp.float32)
    matmul = jax.jit(lambda x, w: x @ w)

    # the plain einsum's operands: levels (F, m, columns) and signs, as the kernel sees them
    mapped = rx.map_weights(weights, config)
    data = mapped.levels[..., :mapped.layout.data_columns]
    levels = data.reshape(data.shape[0], m, -1)
    sign = jnp.repeat(mapped.fragment_sign, mapped.layout.slices, axis=-1).reshape(
        data.shape[0], -1)
    x_int = jnp.asarray(rng.integers(0, 2 ** 16, size=(batch, size)), jnp.int32)
    plain = plain_einsum_read(config, size)

    rows = [
        ("emulated read (FORMS, ideal devices)", timed(read, layer, x, repeats=args.repeats)),
        ("emulated read + read noise 2 %", timed(read_noisy, noisy_layer, x, jax.random.key(0),
                                                 repeats=args.repeats)),
        ("plain einsum over fragments", timed(plain, levels, sign, x_int, repeats=args.repeats)),
        ("ideal float32 matmul", timed(matmul, x, w32, repeats=args.repeats)),
    ]
    matmul_median = np.median(rows[-1][1])
    print(describe())
    print(f"layer {size} x {size}, batch {batch}, FORMS preset: {conversions:.3e} ADC conversions "
          f"per read; {args.repeats} repeats")
    print(f"{'':40s} {'median s':>10s} {'min..max s':>17s} {'conv/s':>10s} {'x matmul':>9s}")
    for name, times in rows:
        median = np.median(times)
        rate = conversions / median if "matmul" not in name else float("nan")
        print(f"{name:40s} {median:10.4f} {times.min():8.4f}..{times.max():<8.4f} "
              f"{rate:10.3e} {median / matmul_median:9.1f}")


if __name__ == "__main__":
    main()
