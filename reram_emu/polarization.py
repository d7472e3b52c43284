"""Polarized fragments: the sign rule, the projection and the checker (FORMS, ISCA 2021).

A fragment is ``m`` consecutive rows of one column of a (K, N) weight matrix (K inputs, N
outputs). It is polarized when all its nonzero weights share one sign. Rows are padded with
zeros to a multiple of ``m``. These functions are pure JAX (jit, vmap and grad friendly where it
makes sense) and are used both by the mapping (to validate or project weights before
programming) and by the ADMM polarizer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "fragment_view",
    "expand_fragments",
    "fragment_signs",
    "project_polarized",
    "polarization_violations",
    "is_polarized",
    "PolarizationReport",
]

SIGN_RULES = ("sum", "euclidean")


def fragment_view(weights: jax.Array, fragment_rows: int) -> jax.Array:
    """Reshape (K, N) weights to (F, m, N) fragments, zero-padding K up to ``F * m``."""
    if weights.ndim != 2:
        raise ValueError(f"weights must be a (K, N) matrix, got shape {weights.shape}")
    k = weights.shape[0]
    fragments = -(-k // fragment_rows)
    padded = jnp.pad(weights, ((0, fragments * fragment_rows - k), (0, 0)))
    return padded.reshape(fragments, fragment_rows, weights.shape[1])


def fragment_signs(weights: jax.Array, fragment_rows: int, rule: str = "sum") -> jax.Array:
    """The sign (+1 or -1) of every fragment, shape (F, N).

    ``rule="sum"`` (the paper's): the sign of the fragment's weight sum, ``>= 0`` meaning +.
    ``rule="euclidean"``: the sign whose entries have the larger sum of squares (ties +); this is
    the Euclidean projection's choice: it keeps the most energy.
    """
    if rule not in SIGN_RULES:
        raise ValueError(f"sign rule must be one of {SIGN_RULES}, got {rule!r}")
    fragments = fragment_view(weights, fragment_rows)
    if rule == "sum":
        score = jnp.sum(fragments, axis=1)
    else:
        positive = jnp.sum(jnp.where(fragments > 0, fragments ** 2, 0.0), axis=1)
        negative = jnp.sum(jnp.where(fragments < 0, fragments ** 2, 0.0), axis=1)
        score = positive - negative
    return jnp.where(score >= 0, 1.0, -1.0).astype(weights.dtype)


def expand_fragments(per_fragment: jax.Array, fragment_rows: int, rows: int) -> jax.Array:
    """The inverse of :func:`fragment_view` for one value per fragment: ``(F, ...)`` values
    (fragment signs, a fragment's keep mask) repeated over each fragment's ``fragment_rows``
    word lines and cut to the layer's ``rows`` (the last fragment may be partial)."""
    return jnp.repeat(per_fragment, fragment_rows, axis=0)[:rows]


def project_polarized(weights: jax.Array, fragment_rows: int, rule: str = "sum",
                      signs: jax.Array | None = None) -> jax.Array:
    """Zero every weight whose sign differs from its fragment's sign.

    ``signs`` (F, N) fixes the fragment signs (e.g. signs kept between ADMM sign updates);
    otherwise they come from ``rule``. With ``rule="euclidean"`` this is the exact Euclidean
    projection onto the set of polarized matrices. Idempotent.
    """
    if signs is None:
        signs = fragment_signs(weights, fragment_rows, rule)
    expanded = expand_fragments(signs, fragment_rows, weights.shape[0])
    return jnp.where(weights * expanded >= 0, weights, jnp.zeros_like(weights))


class PolarizationReport(NamedTuple):
    """Damage of a projection: counts and the relative Frobenius norm of what was removed."""

    fragments: int
    fragments_broken: int
    weights_zeroed: int
    relative_norm_removed: float


def polarization_violations(weights: jax.Array, fragment_rows: int,
                            rule: str = "sum") -> PolarizationReport:
    """Count the fragments that are not polarized and what projecting them would remove."""
    signs = fragment_signs(weights, fragment_rows, rule)
    expanded = expand_fragments(signs, fragment_rows, weights.shape[0])
    wrong = (weights * expanded) < 0
    broken = jnp.any(fragment_view(wrong.astype(jnp.int32), fragment_rows) > 0, axis=1)
    total = jnp.sqrt(jnp.sum(weights.astype(jnp.float32) ** 2))
    removed = jnp.sqrt(jnp.sum(jnp.where(wrong, weights, 0).astype(jnp.float32) ** 2))
    relative = jnp.where(total > 0, removed / jnp.maximum(total, 1e-30), 0.0)
    return PolarizationReport(int(broken.size), int(jnp.sum(broken)), int(jnp.sum(wrong)),
                              float(relative))


def is_polarized(weights: jax.Array, fragment_rows: int) -> jax.Array:
    """True when every fragment's nonzero weights share one sign (a traced bool scalar)."""
    fragments = fragment_view(weights, fragment_rows)
    has_positive = jnp.any(fragments > 0, axis=1)
    has_negative = jnp.any(fragments < 0, axis=1)
    return ~jnp.any(has_positive & has_negative)
