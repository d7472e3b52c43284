"""Fast Gaussian streams for per-conversion noise, seeded from explicit ``jax.random`` keys.

A read with noise needs one Gaussian per ADC conversion (about 5e8 for a 512 x 512 FORMS layer
and a batch of 256). ``jax.random.normal`` (threefry) produces about 4e7 values per second on a
2-core CPU, which would make noise 20x dearer than the read itself. :func:`normal` draws the
key's two 32-bit seeds with ``jax.random`` and expands them with a counter-based hash (two
rounds of Wellons' ``lowbias32`` integer mixer, seeds entering both rounds), then maps the 23
top bits to a Gaussian through the inverse error function, as ``jax.random.normal`` does. Same
key, same values; different keys, independent-looking streams (tested for moments, the normal
law and cross-key correlation). Not for cryptography.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["normal"]

_GOLDEN = 0x9E3779B9


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal values of ``shape`` from ``key`` (at most 2**32 values per key)."""
    if math.prod(shape) > 2 ** 32:
        raise ValueError(f"at most 2**32 values per key, asked for shape {shape}")
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _lowbias32(_lowbias32(counter * jnp.uint32(_GOLDEN) + seeds[0]) ^ seeds[1])
    # 23 bits -> uniform in (-1, 1), open at both ends (exact in float32), then the inverse CDF
    uniform = ((bits >> 9).astype(dtype) + 0.5) * (2.0 / 8388608.0) - 1.0
    return (math.sqrt(2.0) * jax.scipy.special.erfinv(uniform)).astype(dtype)
