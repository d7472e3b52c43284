"""Weight and input quantization, and the digits an input feeds per cycle.

Weights: symmetric uniform quantization to signed integers in
``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` with a per-layer or per-output-channel scale.
Inputs: unsigned integers in ``[0, 2**bits - 1]`` or two's complement in
``[-2**(bits-1), 2**(bits-1) - 1]``, with a per-vector or per-batch scale (or one given).
All functions are pure JAX and jit/vmap friendly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import InputConfig, WeightConfig

__all__ = [
    "quantize_weights",
    "input_scale",
    "quantize_inputs",
    "input_digits",
    "effective_cycles",
    "cycle_weights",
]


def quantize_weights(weights: jax.Array, config: WeightConfig) -> tuple[jax.Array, jax.Array]:
    """Quantize a (K, N) weight matrix (K inputs, N outputs) to signed integers.

    Returns ``(integers, scale)`` with ``weights ~= integers * scale``; ``integers`` has the
    weights' floating dtype and holds exact integers and ``scale`` has shape () (per layer) or (N,) (per output channel).
    An all-zero layer or channel gets scale 1.
    """
    levels = 2 ** (config.bits - 1) - 1
    if config.scale == "per_layer":
        max_abs = jnp.max(jnp.abs(weights))
    else:
        max_abs = jnp.max(jnp.abs(weights), axis=0)
    scale = jnp.where(max_abs > 0, max_abs / levels, 1.0).astype(weights.dtype)
    integers = jnp.clip(jnp.round(weights / scale), -levels, levels)
    return integers, scale


def input_scale(x: jax.Array, config: InputConfig) -> jax.Array:
    """The quantization step of a (B, K) input batch: shape (B, 1) per vector or () per batch.

    The largest magnitude maps to the largest code (``2**bits - 1`` unsigned,
    ``2**(bits-1) - 1`` signed); an all-zero vector gets scale 1.
    """
    top = 2 ** (config.bits - 1) - 1 if config.signed else 2 ** config.bits - 1
    if config.scale == "per_vector":
        max_abs = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    else:
        max_abs = jnp.max(jnp.abs(x))
    return jnp.where(max_abs > 0, max_abs / top, 1.0).astype(x.dtype)


def quantize_inputs(x: jax.Array, scale: jax.Array, config: InputConfig) -> jax.Array:
    """Round ``x / scale`` to the input integer range (clipping), as int32.

    Unsigned inputs clip negative values to 0 (as a ReLU would).
    """
    if config.signed:
        low, high = -(2 ** (config.bits - 1)), 2 ** (config.bits - 1) - 1
    else:
        low, high = 0, 2 ** config.bits - 1
    return jnp.clip(jnp.round(x / scale), low, high).astype(jnp.int32)


def input_digits(x_int: jax.Array, config: InputConfig, dtype=jnp.float32) -> jax.Array:
    """The DAC level of every input cycle, least significant first.

    ``x_int`` of shape (..., K) int32 gives (..., cycles, K) of ``dtype`` in
    ``[0, 2**dac_bits - 1]``.
    Signed inputs are taken as ``bits``-bit two's complement; the sign of the last cycle is
    applied by the digital shift-add (see :func:`cycle_weights`).
    """
    mask = 2 ** config.bits - 1
    unsigned = jnp.bitwise_and(x_int, mask)
    shifts = config.dac_bits * jnp.arange(config.cycles, dtype=jnp.int32)
    digits = jnp.right_shift(unsigned[..., None, :], shifts[:, None])
    return jnp.bitwise_and(digits, config.max_digit).astype(dtype)


def _bit_length(value: jax.Array) -> jax.Array:
    """Number of significant bits of non-negative int32 values (0 for 0)."""
    return (32 - jax.lax.clz(value)).astype(jnp.int32)


def effective_cycles(x_int: jax.Array, config: InputConfig, group: int) -> jax.Array:
    """Cycles each group of ``group`` consecutive inputs needs with zero-skipping.

    ``x_int`` (..., K) with K a multiple of ``group``; returns (..., K // group) int32: the
    largest effective width (in DAC cycles) among the group's inputs. Unsigned: bits after
    removing leading zeros. Signed: the shortest two's complement width that represents the
    value (leading copies of the sign bit removed), so the fragment's last cycle carries the sign.
    """
    if config.signed:
        magnitude = jnp.where(x_int < 0, jnp.bitwise_not(x_int), x_int)
        width = jnp.where(x_int == 0, 0, _bit_length(magnitude) + 1)
    else:
        width = _bit_length(x_int)
    cycles = -(-width // config.dac_bits)
    shape = x_int.shape[:-1] + (x_int.shape[-1] // group, group)
    return jnp.max(cycles.reshape(shape), axis=-1)


def cycle_weights(cycles_needed: jax.Array, config: InputConfig, dtype=jnp.float32) -> jax.Array:
    """Digital significance of each input cycle for groups that run ``cycles_needed`` cycles.

    ``cycles_needed`` (...,) int32 gives (..., cycles) of ``dtype``: ``2**(dac_bits * k)`` for the
    cycles run, 0 for skipped ones, and for signed inputs ``-2**(n-1)`` for the last cycle run
    (its bit is the sign bit of the sign-extended ``n``-bit two's complement value).
    """
    k = jnp.arange(config.cycles, dtype=jnp.int32)
    significance = jnp.left_shift(1, config.dac_bits * k).astype(dtype)  # exact powers of 2
    needed = cycles_needed[..., None]
    run = k < needed
    if config.signed:
        significance = jnp.where(k == needed - 1, -significance, significance)
    return jnp.where(run, significance, 0.0)
