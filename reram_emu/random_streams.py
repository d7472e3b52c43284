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

__all__ = ["normal", "key_seeds", "normal_from_seeds"]

_GOLDEN = 0x9E3779B9


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
            -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
         -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _horner(coefficients, w):
    """Polynomial with ``coefficients`` (highest power first) at ``w``."""
    p = jnp.full_like(w, coefficients[0])
    for c in coefficients[1:]:
        p = c + p * w
    return p


def _erfinv(x):
    """Inverse error function on (-1, 1), single precision (M. Giles, "Approximating the erfinv
    function", GPU Computing Gems, 2011; the polynomials XLA uses too). ``-log((1-x)(1+x))``
    instead of ``-log1p(-x*x)``: the absolute error of ``w`` stays ~1e-7 and the polynomial in
    ``w`` is smooth, so the result keeps ~1e-7 relative accuracy, and plain ``log`` vectorizes
    where XLA's ``log1p`` inside the read kernel did not (2x faster noisy reads, measured)."""
    w = -jnp.log((1.0 - x) * (1.0 + x))
    central = _horner(_CENTRAL, w - 2.5)
    tail = _horner(_TAIL, jnp.sqrt(w) - 3.0)
    return jnp.where(w < 5.0, central, tail) * x


def key_seeds(key: jax.Array) -> jax.Array:
    """The two 32-bit seeds (uint32, shape (2,)) a stream expands, drawn from ``key``."""
    return jax.random.bits(key, (2,), jnp.uint32)


def normal_from_seeds(seeds: jax.Array, shape: tuple[int, ...], stream=None,
                      dtype=jnp.float32) -> jax.Array:
    """Standard normal values of shape ``seeds.shape[:-1] + shape``, one stream per seed pair.

    ``seeds`` (..., 2) uint32 come from :func:`key_seeds` (vmapped for many keys); ``stream``
    (uint32, broadcast against ``seeds.shape[:-1]``; None: none) splits one seed pair into
    independent sub-streams without another ``jax.random`` call. Elementwise, so inside a
    jitted read the values are generated where they are used (fused, never stored).
    """
    if math.prod(shape) > 2 ** 32:
        raise ValueError(f"at most 2**32 values per stream, asked for shape {shape}")
    lead = seeds.shape[:-1]
    first, second = seeds[..., 0], seeds[..., 1]
    if stream is not None:
        stream = jnp.asarray(stream, jnp.uint32)
        first = _lowbias32(first ^ _lowbias32(stream * jnp.uint32(_GOLDEN) + jnp.uint32(1)))
    expand = (Ellipsis,) + (None,) * len(shape)
    counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    counter = jnp.broadcast_to(counter, lead + tuple(shape))
    bits = _lowbias32(_lowbias32(counter * jnp.uint32(_GOLDEN) + first[expand]) ^ second[expand])
    # 23 bits -> uniform in (-1, 1), open at both ends (exact in float32), then the inverse CDF
    uniform = ((bits >> 9).astype(dtype) + 0.5) * (2.0 / 8388608.0) - 1.0
    return (math.sqrt(2.0) * _erfinv(uniform)).astype(dtype)


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal values of ``shape`` from ``key`` (at most 2**32 values per key)."""
    return normal_from_seeds(key_seeds(key), shape, dtype=dtype)
