"""Validation at the API boundary: random keys and traced noise numbers.

Every public entry point that takes a key or :class:`~reram_emu.config.NoiseParameters`
checks it here, so a wrong argument gets a ``TypeError``/``ValueError`` that names it, says
what was given and what is allowed, instead of a traceback from inside JAX.

Values are checked only when they are concrete: under ``jit`` a traced number cannot be
inspected, so its shape and dtype are checked and its value is the caller's responsibility
(see :func:`check_noise`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import NoiseParameters

__all__ = ["check_key", "check_noise", "is_concrete", "NOISE_RANGES"]

#: allowed closed range of each NoiseParameters field (None: unbounded on that side)
NOISE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "variation_sigma": (0.0, None),
    "read_noise_sigma": (0.0, None),
    "stuck_on_rate": (0.0, 1.0),
    "stuck_off_rate": (0.0, 1.0),
    "adc_noise_lsb": (0.0, None),
    "adc_offset_lsb": (None, None),
    "wire_row_ohms": (0.0, None),
    "wire_col_ohms": (0.0, None),
}


def is_concrete(value: Any) -> bool:
    """True when ``value`` is not a JAX tracer (its numbers can be read)."""
    return not isinstance(value, jax.core.Tracer)


def check_key(key: Any, name: str = "key", *, required: bool = False) -> None:
    """A single PRNG key: typed (``jax.random.key``, shape ()) or legacy (``PRNGKey``, uint32
    (2,)). ``None`` passes unless ``required``."""
    if key is None:
        if required:
            raise ValueError(f"{name} is required here (a jax.random.key(seed))")
        return
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is None or shape is None:
        raise TypeError(f"{name} must be a jax.random key (jax.random.key(seed)), got "
                        f"{type(key).__name__} {key!r:.60}")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if tuple(shape) != ():
            raise ValueError(f"{name} must be one key (shape ()), got a batch of keys of shape "
                             f"{tuple(shape)}; use jax.vmap over the keys, or pass one")
        return
    if np.dtype(dtype) == np.uint32 and tuple(shape) == (2,):
        return  # a legacy jax.random.PRNGKey
    if np.dtype(dtype) == np.uint32 and len(shape) == 2 and shape[-1] == 2:
        raise ValueError(f"{name} must be one key, got a batch of legacy keys of shape "
                         f"{tuple(shape)}; use jax.vmap over the keys, or pass one")
    raise TypeError(f"{name} must be a jax.random key (jax.random.key(seed), or a legacy "
                    f"uint32 (2,) PRNGKey), got an array of dtype {dtype} and shape "
                    f"{tuple(shape)}")


def check_noise(noise: Any, name: str = "noise") -> None:
    """``noise`` is None or one point of :class:`NoiseParameters`: every field a real scalar
    (or None for the wire resistances), within :data:`NOISE_RANGES` when concrete, the two
    stuck-at rates summing to at most 1. A batch of points (fields shaped (P,)) must go through
    ``jax.vmap`` or :func:`reram_emu.sweeps.sweep`."""
    if noise is None:
        return
    if not isinstance(noise, NoiseParameters):
        raise TypeError(f"{name} must be a reram_emu.NoiseParameters (e.g. "
                        f"config.noise_parameters()), got {type(noise).__name__}")
    concrete = {}
    for field, value in zip(NoiseParameters._fields, noise):
        if value is None and field in ("wire_row_ohms", "wire_col_ohms"):
            continue
        label = f"{name}.{field}"
        if isinstance(value, (str, bytes, bool)) or value is None:
            raise TypeError(f"{label} must be a real number, got {type(value).__name__} "
                            f"{value!r}")
        try:
            dtype = jnp.asarray(value).dtype if is_concrete(value) else value.dtype
        except TypeError as error:
            raise TypeError(f"{label} must be a real number, got {type(value).__name__}") \
                from error
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(f"{label} must be a real number, got dtype {dtype}")
        if np.ndim(value) != 0:
            raise ValueError(f"{label} must be a scalar (one noise point), got shape "
                             f"{np.shape(value)}; for many points use jax.vmap or "
                             f"reram_emu.sweeps.sweep")
        if is_concrete(value):
            number = float(value)
            low, high = NOISE_RANGES[field]
            if not math.isfinite(number):
                raise ValueError(f"{label} must be finite, got {number}")
            if low is not None and number < low or high is not None and number > high:
                allowed = f"[{low if low is not None else '-inf'}, " \
                          f"{high if high is not None else 'inf'}]"
                raise ValueError(f"{label} must be in {allowed}, got {number}")
            concrete[field] = number
    if concrete.get("stuck_on_rate", 0.0) + concrete.get("stuck_off_rate", 0.0) > 1.0:
        raise ValueError(f"{name}.stuck_on_rate + stuck_off_rate must be <= 1, got "
                         f"{concrete['stuck_on_rate']} + {concrete['stuck_off_rate']}")
