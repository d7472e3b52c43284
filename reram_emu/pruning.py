"""Crossbar-aware structured pruning: the structures, the projection and the accounting.

A crossbar layer holds a (K, N) weight matrix (K inputs on word lines, N outputs on bit
lines; convolutions in im2col form). A *structure* is a group of weights that frees hardware
once it is all zero (FORMS, Yuan et al., ISCA 2021, Sec. IV; Zhang et al., "A Systematic DNN
Weight Pruning Framework using ADMM", ECCV 2018):

* ``"columns"``: one output column, a whole filter. Its slice columns need no cells, no ADC.
* ``"rows"``: one input row, a *filter shape*: one kernel position of one input channel
  across all filters. Its word line need not exist: the input vector skips that entry.
* ``"fragments"``: m consecutive rows of one column (:mod:`reram_emu.polarization`'s
  fragments). An all-zero fragment stores nothing and is never converted, but frees a
  crossbar only together with the rest of its rows.

:func:`project_structures` is the Euclidean projection onto "at most k non-zero structures of
one kind": keep the k structures of largest L2 norm, zero the rest (ties keep the lower
index). :func:`project_pruned` applies the kinds a :class:`PruneConfig` names in the fixed order
rows, columns, fragments; the result satisfies every bound, and a second application changes
nothing (idempotent), though with two kinds it is a greedy, not the exact, projection onto
their intersection. How many of each kind a layer keeps is a *ratio* (structures / kept, >= 1):
``k = ceil(count / ratio)`` (:func:`keep_count`).

:func:`compact` drops the all-zero rows and columns a pruned layer no longer needs (a
polarized layer only whole fragment rows, so that its fragments stay polarized) and
:func:`crossbar_usage` counts what it occupies (rows and columns kept, crossbars by
:func:`reram_emu.mapping.column_layout`, live fragments). :func:`paper_crossbar_reduction` is
the FORMS paper's definition of the crossbar reduction (Table I: pruning ratio x 32 / weight
bits x 2, against an unpruned 32-bit model on separate positive and negative crossbars).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .config import CrossbarConfig
from .mapping import column_layout
from .polarization import expand_fragments, fragment_view

__all__ = ["STRUCTURES", "PruneConfig", "keep_count", "structure_norms", "project_structures",
           "project_pruned", "structure_counts", "compact", "CrossbarUsage", "crossbar_usage",
           "paper_crossbar_reduction"]

#: The structure kinds, in the order :func:`project_pruned` applies them.
STRUCTURES = ("rows", "columns", "fragments")


def _check_ratio(what: str, ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number >= 1 (structures / structures kept), got "
                        f"{type(ratio).__name__} {ratio!r}")
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"{what} must be a finite prune ratio >= 1 (structures / structures "
                         f"kept; 1 keeps all), got {ratio}")
    return ratio


def _ratios(what: str, ratios) -> tuple[tuple[str, float], ...]:
    if not isinstance(ratios, dict):
        raise TypeError(f"{what} must be a dict {{structure: ratio}} with structures from "
                        f"{STRUCTURES}, got {type(ratios).__name__}")
    unknown = sorted(set(ratios) - set(STRUCTURES))
    if unknown:
        raise ValueError(f"{what}: unknown structure(s) {unknown}; known: {STRUCTURES}")
    return tuple((s, _check_ratio(f"{what}[{s!r}]", ratios[s])) for s in STRUCTURES
                 if s in ratios)


@dataclass(frozen=True, init=False)
class PruneConfig:
    """How much of each structure every crossbar layer keeps (hashable: a jit static).

    Args:
      rows, columns, fragments: default prune ratios (structures / structures kept, >= 1;
        1 keeps all) of every layer. Each ratio counts all structures of its kind in the
        layer: ``fragments=40`` keeps ``ceil(F / 40)`` of the layer's F fragments, however
        many of them rows and columns pruning left non-zero.
      fragment_rows: m of the ``"fragments"`` structure (the crossbar's fragment size).
      layers: ``{layer name or glob: {structure: ratio}}`` overriding the defaults of the
        layers it matches (the first matching entry wins; a structure it omits keeps the
        default). Layer names are those of :func:`reram_emu.training.crossbar_view`, e.g.
        ``"fc1/w"``.

    Raises:
      ValueError, TypeError: a ratio < 1, not finite or not a number; an unknown structure.
    """

    defaults: tuple[tuple[str, float], ...]
    fragment_rows: int
    layers: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]

    def __init__(self, rows: float = 1.0, columns: float = 1.0, fragments: float = 1.0, *,
                 fragment_rows: int = 8, layers: dict | None = None):
        defaults = _ratios("PruneConfig", {"rows": rows, "columns": columns,
                                           "fragments": fragments})
        if isinstance(fragment_rows, bool) or not isinstance(fragment_rows, int) \
                or fragment_rows < 1:
            raise ValueError(f"fragment_rows must be an int >= 1, got {fragment_rows!r}")
        layers = {} if layers is None else layers
        if not isinstance(layers, dict):
            raise TypeError(f"layers must be a dict {{layer name or glob: {{structure: "
                            f"ratio}}}}, got {type(layers).__name__}")
        overrides = []
        for pattern, ratios in layers.items():
            if not isinstance(pattern, str) or not pattern:
                raise TypeError(f"layers keys must be non-empty layer names or globs, got "
                                f"{pattern!r}")
            overrides.append((pattern, _ratios(f"layers[{pattern!r}]", ratios)))
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(self, "fragment_rows", fragment_rows)
        object.__setattr__(self, "layers", tuple(overrides))

    def ratios(self, name: str) -> dict[str, float]:
        """``{structure: ratio}`` of the layer ``name`` (defaults, then its first override)."""
        out = dict(self.defaults)
        for pattern, ratios in self.layers:
            if fnmatch.fnmatchcase(name, pattern):
                out.update(ratios)
                break
        return out

    def check_layers(self, names) -> None:
        """ValueError when an override matches none of the layer ``names`` (a typo)."""
        names = list(names)
        for pattern, _ in self.layers:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"PruneConfig.layers key {pattern!r} matches no crossbar "
                                 f"layer; layers: {', '.join(names)}")


def keep_count(count: int, ratio: float) -> int:
    """Structures kept out of ``count`` at prune ratio ``ratio`` (>= 1): ``ceil(count / ratio)``."""
    ratio = _check_ratio("ratio", ratio)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    return int(math.ceil(int(count) / ratio - 1e-9))


def _check_structure(structure: str) -> None:
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; known: {', '.join(STRUCTURES)}")


def structure_norms(weights: jax.Array, structure: str, fragment_rows: int = 8) -> jax.Array:
    """L2 norm of every structure: rows (K,), columns (N,) or fragments (F, N)."""
    _check_structure(structure)
    w = jnp.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a (K, N) matrix, got shape {w.shape}")
    if structure == "rows":
        return jnp.sqrt(jnp.sum(w * w, axis=1))
    if structure == "columns":
        return jnp.sqrt(jnp.sum(w * w, axis=0))
    f = fragment_view(w, fragment_rows)
    return jnp.sqrt(jnp.sum(f * f, axis=1))


def _keep_mask(norms: jax.Array, k: int) -> jax.Array:
    """1 for the k largest entries of ``norms`` (ties: lower flat index first), else 0."""
    flat = norms.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
    return keep.reshape(norms.shape)


def _expand(keep: jax.Array, structure: str, shape, fragment_rows: int) -> jax.Array:
    k, n = shape
    if structure == "rows":
        return jnp.broadcast_to(keep[:, None], shape)
    if structure == "columns":
        return jnp.broadcast_to(keep[None, :], shape)
    return expand_fragments(keep, fragment_rows, k)


def project_structures(weights: jax.Array, structure: str, k: int,
                       fragment_rows: int = 8) -> tuple[jax.Array, jax.Array]:
    """Keep the ``k`` structures of largest L2 norm, zero the others: ``(projected, mask)``.

    The Euclidean projection onto the (K, N) matrices with at most ``k`` non-zero structures
    of the kind ``structure`` (``"rows"``, ``"columns"`` or ``"fragments"`` of
    ``fragment_rows`` rows). ``mask`` (K, N) has the weights' dtype: 1 inside the ``k`` kept
    structures, 0 elsewhere. Idempotent; jit-able with ``k`` static.

    Raises:
      ValueError: unknown structure; ``k`` negative or larger than the number of structures.
    """
    norms = structure_norms(weights, structure, fragment_rows)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    if not 0 <= k <= norms.size:
        raise ValueError(f"k={k} {structure} to keep, but the {tuple(weights.shape)} matrix "
                         f"has {norms.size} {structure}"
                         + (f" of {fragment_rows} rows" if structure == "fragments" else "")
                         + f"; k must be in [0, {norms.size}]")
    mask = _expand(_keep_mask(norms, int(k)), structure, weights.shape,
                   fragment_rows).astype(weights.dtype)
    return weights * mask, mask


def structure_counts(shape, fragment_rows: int = 8) -> dict[str, int]:
    """How many structures of each kind a (K, N) matrix has."""
    k, n = shape
    return {"rows": k, "columns": n, "fragments": -(-k // fragment_rows) * n}


def project_pruned(weights: jax.Array, ratios: dict[str, float],
                   fragment_rows: int = 8) -> tuple[jax.Array, jax.Array]:
    """Prune every kind ``ratios`` names (``{structure: ratio}``, e.g.
    :meth:`PruneConfig.ratios`) in the order :data:`STRUCTURES`: ``(projected, mask)``.

    Each kind keeps :func:`keep_count` of its structures, chosen by their norms after the
    previous kinds were pruned. The mask is the product of the kinds' masks. Idempotent.
    """
    w = jnp.asarray(weights)
    mask = jnp.ones_like(w)
    counts = structure_counts(w.shape, fragment_rows)
    for structure in STRUCTURES:
        ratio = ratios.get(structure, 1.0)
        if ratio == 1.0:
            continue
        w, m = project_structures(w, structure, keep_count(counts[structure], ratio),
                                  fragment_rows)
        mask = mask * m
    return w, mask


# --------------------------------------------------------------------------- accounting


def compact(weights, fragment_rows: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop the rows and columns a pruned layer no longer needs:
    ``(compacted, kept_rows, kept_columns)``.

    Columns: every all-zero column goes. Rows: every all-zero row, or, with ``fragment_rows``
    = m, only whole groups of m consecutive rows that are all zero: a polarized layer's
    fragments (and their signs) stay as they were trained, so it can drop only whole fragment
    rows (re-grouping the kept rows would break the polarization). ``kept_rows`` (K,) and
    ``kept_columns`` (N,) are bool; ``compacted`` is ``weights[kept_rows][:, kept_columns]``,
    the matrix the crossbars of the pruned layer hold (its inputs are ``x[:, kept_rows]``;
    the dropped outputs are zero).
    """
    w = np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a (K, N) matrix, got shape {w.shape}")
    rows, cols = np.any(w != 0, axis=1), np.any(w != 0, axis=0)
    if fragment_rows is not None:
        groups = -(-w.shape[0] // fragment_rows)
        live = np.pad(rows, (0, groups * fragment_rows - w.shape[0]))
        live = np.any(live.reshape(groups, fragment_rows), axis=1)
        rows = np.asarray(expand_fragments(live, fragment_rows, w.shape[0]))
    return w[rows][:, cols], rows, cols


class CrossbarUsage(NamedTuple):
    """What one (pruned) layer occupies under a configuration.

    ``weights`` / ``nonzero``: entries of the (K, N) matrix / non-zero ones. ``rows_kept`` /
    ``columns_kept``: rows and columns with a non-zero weight. ``rows_stored``: the rows the
    crossbars hold: ``rows_kept``, except that the polarized mapping keeps whole fragments of
    m rows (:func:`compact` with ``fragment_rows``). ``crossbars``: crossbar tiles of the
    stored (compacted) matrix; ``crossbars_dense``: of the unpruned (K, N) matrix under the
    same configuration (both by :func:`reram_emu.mapping.column_layout`, both crossbars of a
    differential pair counted). ``fragments`` / ``fragments_live``: fragments of the stored
    matrix / with a non-zero weight (the live ones are converted).
    """

    rows: int
    rows_kept: int
    rows_stored: int
    columns: int
    columns_kept: int
    weights: int
    nonzero: int
    crossbars: int
    crossbars_dense: int
    fragments: int
    fragments_live: int

    @property
    def prune_ratio(self) -> float:
        """Weights / non-zero weights (inf for an all-zero layer)."""
        return self.weights / self.nonzero if self.nonzero else math.inf


def crossbar_usage(weights, config: CrossbarConfig) -> CrossbarUsage:
    """Count the crossbar resources of a pruned (K, N) layer (see :class:`CrossbarUsage`)."""
    w = np.asarray(weights)
    m = config.geometry.fragment_rows
    stored, _, cols = compact(w, m if config.mapping.scheme == "polarized" else None)
    kr, kc = stored.shape
    live = (int(np.sum(np.any(fragment_view(jnp.asarray(stored != 0), m), axis=1)))
            if stored.size else 0)
    return CrossbarUsage(
        rows=int(w.shape[0]), rows_kept=int(np.count_nonzero(np.any(w != 0, axis=1))),
        rows_stored=int(kr), columns=int(w.shape[1]), columns_kept=int(kc),
        weights=int(w.size), nonzero=int(np.count_nonzero(w)),
        crossbars=column_layout(config, kr, kc).crossbars if stored.size else 0,
        crossbars_dense=column_layout(config, *w.shape).crossbars,
        fragments=-(-kr // m) * kc, fragments_live=live)


def paper_crossbar_reduction(prune_ratio: float, weight_bits: int = 8,
                             reference_bits: int = 32, polarized: bool = True) -> float:
    """The FORMS paper's crossbar reduction (Table I): ``prune_ratio * reference_bits /
    weight_bits * (2 if polarized)``, against an unpruned ``reference_bits`` model on separate
    positive and negative crossbars. E.g. LeNet-5: 23.18 x 4 x 2 = 185.44."""
    _check_ratio("prune_ratio", prune_ratio)
    if weight_bits < 1 or reference_bits < weight_bits:
        raise ValueError(f"need 1 <= weight_bits <= reference_bits, got {weight_bits}, "
                         f"{reference_bits}")
    return float(prune_ratio) * reference_bits / weight_bits * (2.0 if polarized else 1.0)
