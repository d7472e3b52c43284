"""Mapping a float weight matrix onto crossbar cells: quantize, sign scheme, slices, tiles.

The result, :class:`MappedWeights`, holds the *target level* (0 .. 2**bits_per_cell - 1) of every
physical cell, arranged as ``(F, m, column_tiles, X)``: F fragments of m rows (fragment ``f``
sits in row tile ``f // (rows // m)``), and per column tile X physical columns laid out as

* ``[0, W*S)``: the data columns: W weights per tile, the S slices of one weight side by side
  (least significant slice first), as in FORMS;
* differential only: ``[W*S, 2*W*S)``: the negative crossbar's data columns (PRIME);
* a reference column of G_off cells (level 0) when ``baseline == "reference_column"`` and the
  scheme is not differential;
* offset only: ISAAC's unit column, level 1 in every row, which counts the active inputs.

Rows are padded with zeros to a multiple of m (a partly used last tile only has the fragments
it needs) and columns to a multiple of W. :func:`map_weights` is the validated boundary;
:func:`encode_weights` is the pure, jit-friendly core used inside training loops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .config import CrossbarConfig
from .polarization import (PolarizationReport, fragment_signs, fragment_view,
                           polarization_violations, project_polarized)
from .quantization import quantize_weights

__all__ = ["ColumnLayout", "MappedWeights", "column_layout", "encode_weights", "map_weights"]


@dataclass(frozen=True)
class ColumnLayout:
    """Static shape bookkeeping of one mapped layer (hashable, a jit static)."""

    in_features: int
    out_features: int
    fragment_rows: int
    fragments: int
    fragments_per_tile: int
    row_tiles: int
    slices: int
    weights_per_tile: int
    column_tiles: int
    scheme: str
    reference_column: int | None
    unit_column: int | None
    columns_per_tile: int

    @property
    def data_columns(self) -> int:
        """Data (slice) columns per tile, per crossbar of a differential pair."""
        return self.weights_per_tile * self.slices

    @property
    def padded_out_features(self) -> int:
        return self.column_tiles * self.weights_per_tile

    @property
    def crossbars(self) -> int:
        """Crossbar tiles used (both crossbars of each differential pair counted)."""
        pair = 2 if self.scheme == "differential" else 1
        return self.row_tiles * self.column_tiles * pair

    @property
    def adc_inputs_per_tile(self) -> int:
        """Values converted per fragment, per column tile, per input cycle."""
        return self.data_columns + (1 if self.unit_column is not None else 0)


def column_layout(config: CrossbarConfig, in_features: int, out_features: int) -> ColumnLayout:
    """The physical arrangement of a (in_features, out_features) layer under ``config``."""
    geometry, scheme = config.geometry, config.mapping.scheme
    m = geometry.fragment_rows
    slices = config.weight_slices
    # a layer narrower than one tile uses only its own columns (the rest of the tile holds no
    # weights and is neither computed nor converted)
    per_tile = min(config.weights_per_tile, out_features)
    data = per_tile * slices
    columns = data * (2 if scheme == "differential" else 1)
    reference = None
    if config.mapping.baseline == "reference_column" and scheme != "differential":
        reference, columns = columns, columns + 1
    unit = None
    if scheme == "offset":
        unit, columns = columns, columns + 1
    return ColumnLayout(
        in_features=in_features, out_features=out_features, fragment_rows=m,
        fragments=-(-in_features // m), fragments_per_tile=geometry.fragments_per_tile,
        row_tiles=-(-in_features // geometry.rows), slices=slices, weights_per_tile=per_tile,
        column_tiles=-(-out_features // per_tile), scheme=scheme, reference_column=reference,
        unit_column=unit, columns_per_tile=columns)


@dataclass(frozen=True)
class MappedWeights:
    """Target cell levels of a layer, before programming (a pytree).

    Attributes:
      levels: (F, m, column_tiles, X) target level index of every cell. All arrays have the
        configuration's floating dtype (float32 by default).
      fragment_sign: (F, column_tiles, W), +1/-1 per fragment and output column
        (polarized; all +1 otherwise). Stored in FORMS's small sign array.
      flipped: (F, column_tiles, W*S), 1 where ISAAC's flip encoding stored a slice
        column as ``max_level - level`` for that fragment (offset scheme), else 0.
      integer_weights: (K, N), the quantized (and, if asked, projected) integer weights.
      weight_scale: () or (N,), ``weights ~= integer_weights * weight_scale``.
      weights_zeroed: () int32, quantized weights the polarized mapping zeroed because they
        oppose their fragment's sign (0 for polarized weights and the other schemes). Under
        ``jit`` this is how a mapping says it changed the weights: check it (``map_weights``
        rejects such weights outside ``jit`` unless ``on_violation="project"``).
      config, layout: static.
      report: the polarization damage when weights were projected (not part of the pytree).
    """

    levels: jax.Array
    fragment_sign: jax.Array
    flipped: jax.Array
    integer_weights: jax.Array
    weight_scale: jax.Array
    weights_zeroed: jax.Array
    config: CrossbarConfig
    layout: ColumnLayout
    report: PolarizationReport | None = None


jax.tree_util.register_dataclass(
    MappedWeights,
    data_fields=["levels", "fragment_sign", "flipped", "integer_weights", "weight_scale",
                 "weights_zeroed"],
    meta_fields=["config", "layout"], drop_fields=["report"])


def _slice_levels(magnitude: jax.Array, slices: int, bits_per_cell: int) -> jax.Array:
    """Split non-negative integers (..., ) into (..., slices) levels, least significant first."""
    shifts = bits_per_cell * jnp.arange(slices, dtype=jnp.int32)
    parts = jnp.right_shift(magnitude.astype(jnp.int32)[..., None], shifts)
    return jnp.bitwise_and(parts, 2 ** bits_per_cell - 1).astype(magnitude.dtype)


def _to_tiles(columns: jax.Array, layout: ColumnLayout) -> jax.Array:
    """(F, m, N, S) -> (F, m, column_tiles, W*S), padding N to the tile multiple."""
    f, m, n, s = columns.shape
    pad = layout.padded_out_features - n
    columns = jnp.pad(columns, ((0, 0), (0, 0), (0, pad), (0, 0)))
    return columns.reshape(f, m, layout.column_tiles, layout.weights_per_tile * s)


def _pad_output_columns(values: jax.Array, layout: ColumnLayout) -> jax.Array:
    """(F, N) -> (F, column_tiles, W)."""
    pad = layout.padded_out_features - values.shape[1]
    values = jnp.pad(values, ((0, 0), (0, pad)), constant_values=1.0)
    return values.reshape(values.shape[0], layout.column_tiles, layout.weights_per_tile)


def encode_weights(weights: jax.Array, config: CrossbarConfig) -> MappedWeights:
    """Pure, jit-friendly mapping of (K, N) float weights; polarized weights are projected.

    No validation of values here (use :func:`map_weights` at the API boundary): weights that
    break their fragment's sign are zeroed and counted in ``result.weights_zeroed``, the flag
    to check under ``jit``; non-finite weights give a NaN ``weight_scale`` (NaN outputs).
    """
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"config must be a CrossbarConfig, got {type(config).__name__}")
    if np.ndim(weights) != 2:
        raise ValueError(f"weights must be a 2-D (in_features, out_features) matrix, got shape "
                         f"{np.shape(weights)}")
    k, n = weights.shape
    layout = column_layout(config, k, n)
    scheme, m = config.mapping.scheme, layout.fragment_rows
    bits_per_cell, max_level = config.cell.bits_per_cell, config.cell.max_level
    dtype = config.float_dtype
    integers, scale = quantize_weights(weights.astype(dtype), config.weights)

    sign = jnp.ones((layout.fragments, n), dtype)
    zeroed = jnp.zeros((), jnp.int32)
    if scheme == "polarized":
        sign = fragment_signs(integers, m, "sum")
        projected = project_polarized(integers, m, signs=sign)
        zeroed = jnp.sum(projected != integers, dtype=jnp.int32)
        integers = projected

    fragments = fragment_view(integers, m)  # (F, m, N); padded rows are 0
    if scheme == "offset":
        offset = 2 ** (config.weights.bits - 1)
        stored = _slice_levels(fragments + offset, layout.slices, bits_per_cell)
        pad_rows = (jnp.arange(layout.fragments * m) >= k).reshape(layout.fragments, m)
        stored = jnp.where(pad_rows[:, :, None, None], 0.0, stored)
        data = _to_tiles(stored, layout)
    else:
        data = _to_tiles(_slice_levels(jnp.abs(fragments), layout.slices, bits_per_cell), layout)

    flipped = jnp.zeros((layout.fragments, layout.column_tiles, layout.data_columns), dtype)
    if scheme == "offset" and config.mapping.flip_encoding:
        flipped = (jnp.sum(data, axis=1) * 2 > m * max_level).astype(dtype)
        data = jnp.where(flipped[:, None] > 0, max_level - data, data)

    blocks = [data]
    if scheme == "differential":
        negative = (fragments < 0)[..., None]
        positive_part = jnp.where(negative, 0.0, _slice_levels(jnp.abs(fragments), layout.slices,
                                                               bits_per_cell))
        negative_part = jnp.where(negative, _slice_levels(jnp.abs(fragments), layout.slices,
                                                          bits_per_cell), 0.0)
        blocks = [_to_tiles(positive_part, layout), _to_tiles(negative_part, layout)]
    extra_shape = data.shape[:3] + (1,)
    if layout.reference_column is not None:
        blocks.append(jnp.zeros(extra_shape, dtype))
    if layout.unit_column is not None:
        real_rows = (jnp.arange(layout.fragments * m) < k).reshape(layout.fragments, m)
        blocks.append(jnp.broadcast_to(real_rows[:, :, None, None], extra_shape)
                      .astype(dtype))
    levels = jnp.concatenate(blocks, axis=-1)
    return MappedWeights(levels=levels, fragment_sign=_pad_output_columns(sign, layout),
                         flipped=flipped, integer_weights=integers, weight_scale=scale,
                         weights_zeroed=zeroed, config=config, layout=layout)


def _validate_weights(weights) -> jax.Array:
    if isinstance(weights, jax.core.Tracer):
        raise TypeError("map_weights validates concrete arrays; inside jit use encode_weights")
    array = np.asarray(weights)
    if array.ndim != 2:
        raise ValueError(f"weights must be a 2-D (in_features, out_features) matrix, "
                         f"got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"weights must be non-empty, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"weights must be real numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"weights contain {bad} NaN or infinite values; all must be finite")
    return jnp.asarray(array)


def map_weights(weights, config: CrossbarConfig) -> MappedWeights:
    """Validate and map a (in_features, out_features) float weight matrix.

    For the polarized scheme a fragment's sign is the sign of its quantized weight sum. Weights
    of the other sign are rejected (``on_violation="error"``: ValueError counting the broken
    fragments) or zeroed (``"project"``: the damage is in ``result.report``).
    """
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"config must be a CrossbarConfig, got {type(config).__name__}")
    weights = _validate_weights(weights).astype(config.float_dtype)
    report = None
    if config.mapping.scheme == "polarized":
        integers, _ = quantize_weights(weights, config.weights)
        report = polarization_violations(integers, config.geometry.fragment_rows, "sum")
        if report.fragments_broken and config.mapping.on_violation == "error":
            raise ValueError(
                f"{report.fragments_broken} of {report.fragments} fragments "
                f"(fragment_rows={config.geometry.fragment_rows}) are not polarized: "
                f"{report.weights_zeroed} quantized weights oppose their fragment's sign. Train "
                f"with the ADMM polarizer, or pass MappingConfig(on_violation='project') to zero "
                f"them (removing {100 * report.relative_norm_removed:.2f} % of the weight norm)")
    mapped = encode_weights(weights, config)
    return dataclasses.replace(mapped, report=report)
