"""The crossbar pipeline: program a mapped layer, then read batches through it.

Data path of :func:`read` (FIELD.md section 2), per input cycle and fragment:

1. inputs quantized and split into DAC digits (1 bit per cycle by default, LSB first);
2. the fragment's m rows are driven and every column current flows through the array's
   *analog response* (:func:`analog_response`: the programmed conductances; a circuit model
   with wire resistance replaces this one function);
3. the analog front end subtracts the reference column (G_off baseline) or the negative
   crossbar (differential), adds read noise, and each fragment's column is converted by its ADC;
4. the digital back end removes a digital baseline, undoes ISAAC's flip encoding, applies the
   fragment sign (FORMS), weights each conversion by its cycle and slice significance, and
   accumulates over fragments, tiles and cycles; the offset (ISAAC) is subtracted with the unit
   column; the integer result is rescaled to float.

Zero-skipping (FORMS): a fragment runs only as many cycles as its widest input needs; skipped
cycles are neither converted nor accumulated, so they add no ADC noise.

Everything here is pure JAX: ``program`` and ``read`` jit, vmap over keys, batches and
:class:`~reram_emu.config.NoiseParameters`, and the programmed state is a pytree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .checks import check_key, check_noise, is_concrete
from .config import CrossbarConfig, NoiseParameters
from .converters import adc_lsb_levels, calibrated_lsb, convert
from . import random_streams
from .circuit import transfer_matrix
from .devices import program_conductance
from .mapping import ColumnLayout, MappedWeights
from .quantization import (cycle_weights, effective_cycles, input_digits, input_scale,
                           quantize_inputs)

__all__ = ["ProgrammedLayer", "ReadCounts", "ReadResult", "program", "analog_response",
           "adc_response", "read_noise_response", "read", "read_integers", "adc_inputs",
           "effective_weights", "calibrate_adc"]


@dataclass(frozen=True)
class ProgrammedLayer:
    """A layer programmed onto crossbars (a pytree; config and layout are static).

    Attributes:
      conductance: (F, m, column_tiles, X) programmed cell conductances in level units relative
        to G_off (see :mod:`reram_emu.devices`; siemens = ``g_off + value * step``).
      response: (F, m, column_tiles, Y) what a driven fragment row contributes to each ADC
        input, level units (:func:`analog_response` folded through :func:`adc_response`).
      fragment_sign, flipped, weight_scale: from :class:`~reram_emu.mapping.MappedWeights`.
      adc_lsb: () the ADC's LSB in level units.
    """

    conductance: jax.Array
    response: jax.Array
    fragment_sign: jax.Array
    flipped: jax.Array
    weight_scale: jax.Array
    adc_lsb: jax.Array
    config: CrossbarConfig
    layout: ColumnLayout


jax.tree_util.register_dataclass(
    ProgrammedLayer,
    data_fields=["conductance", "response", "fragment_sign", "flipped", "weight_scale",
                 "adc_lsb"],
    meta_fields=["config", "layout"])


class ReadCounts(NamedTuple):
    """What the hardware did for one read of a batch.

    Attributes:
      fragment_cycles: input cycles run, summed over batch rows and fragments (with
        zero-skipping when the configuration enables it).
      fragment_cycles_without_skip: the same without zero-skipping (batch x fragments x cycles).
      adc_conversions: conversions performed (``fragment_cycles`` x ADCs per fragment cycle).
      adc_conversions_without_skip: conversions without zero-skipping.
      negative_inputs: input values below zero that an unsigned input configuration clipped to
        0 (``read`` raises on them outside ``jit``; inside ``jit`` this count is the error
        flag: nonzero means the layer needed ``InputConfig(signed=True)``).
    """

    fragment_cycles: jax.Array
    fragment_cycles_without_skip: jax.Array
    adc_conversions: jax.Array
    adc_conversions_without_skip: jax.Array
    negative_inputs: jax.Array | int = 0

    @property
    def cycles_saved_fraction(self):
        """Fraction of input cycles (and conversions) that zero-skipping saved."""
        return 1.0 - self.fragment_cycles / self.fragment_cycles_without_skip


class ReadResult(NamedTuple):
    outputs: jax.Array
    counts: ReadCounts


def analog_response(conductance: jax.Array, config: CrossbarConfig, layout: ColumnLayout,
                    noise: NoiseParameters | None = None) -> jax.Array:
    """The array's analog response to driven rows, level units relative to G_off, shaped as
    ``conductance`` (F, m, column_tiles, X).

    Ideal wires: a driven row contributes ``digit * G`` to each column, so the response is the
    conductance itself. With ``config.wires`` every physical crossbar (its full ``rows x
    columns`` cells, unused ones at G_off, plus the reference and unit columns) is solved as a
    circuit (:func:`reram_emu.circuit.transfer_matrix`): row ``i`` of its transfer matrix T is
    the column currents per volt on word line ``i`` with every other word line at 0 V, which is
    exactly how one fragment is driven (FORMS) and, by superposition, all rows (ISAAC, PRIME).
    The response is ``(T - G_off) / step``, computed as the ideal response plus ``(T - G) / step``
    so that zero-resistance wires (``T == G``) give the ideal response exactly. The differential scheme's positive and negative
    crossbars are solved as two arrays.
    """
    wires = config.wires
    if wires is None:
        return conductance
    cell, geometry = config.cell, config.geometry
    step = cell.level_step_siemens
    f, m, tiles, width = conductance.shape
    per_tile = geometry.fragments_per_tile
    row_tiles = -(-f // per_tile)
    # physical tiles (row_tiles, column tiles, rows, X) in siemens; absent rows hold G_off cells
    siemens = cell.g_off_siemens + _pad_axis(conductance, 0, row_tiles * per_tile) * step
    siemens = siemens.reshape(row_tiles, geometry.rows, tiles, width).transpose(0, 2, 1, 3)
    data = layout.data_columns
    crossbars = ([(0, data), (data, 2 * data)] if layout.scheme == "differential"
                 else [(0, width)])
    r_row, r_col = wires.r_wire_row_ohms, wires.r_wire_col_ohms
    if noise is not None:  # traced overrides, each wire on its own
        r_row = r_row if noise.wire_row_ohms is None else noise.wire_row_ohms
        r_col = r_col if noise.wire_col_ohms is None else noise.wire_col_ohms
    responses = []
    for start, stop in crossbars:
        block = siemens[..., start:stop]
        used = min(data, stop - start)  # data columns of this crossbar; extras follow them
        unused = geometry.columns - used
        g_off = jnp.full(block.shape[:-1] + (unused,), cell.g_off_siemens, block.dtype)
        physical = jnp.concatenate([block[..., :used], g_off, block[..., used:]], axis=-1)
        transfer = transfer_matrix(physical, r_row, r_col, wires.r_driver_ohms,
                                   wires.r_sense_ohms, layout=wires.layout)
        loss = transfer - physical  # siemens; exactly 0 where the wires cost nothing
        responses.append(jnp.concatenate([loss[..., :used], loss[..., used + unused:]], axis=-1))
    # ideal response + the wires' change, so that T == G gives the ideal response bit for bit
    change = jnp.concatenate(responses, axis=-1) / step
    change = change.transpose(0, 2, 1, 3).reshape(row_tiles * per_tile, m, tiles, width)
    return conductance + change[:f]


def program(mapped: MappedWeights, key: jax.Array | None = None,
            noise: NoiseParameters | None = None) -> ProgrammedLayer:
    """Program mapped weights: draw faults and device variation once from ``key``.

    ``noise`` (traced scalars) overrides the configured device numbers for sweeps. With
    ``ADCConfig(range="calibrated")`` the ADC's LSB starts as NaN: set it with
    :func:`calibrate_adc` before reading.
    """
    if not isinstance(mapped, MappedWeights):
        raise TypeError(f"program() needs the MappedWeights of map_weights(weights, config), "
                        f"got {type(mapped).__name__}")
    check_key(key, "program key")
    check_noise(noise)
    config = mapped.config
    conductance = program_conductance(mapped.levels, config.cell, config.device, key, noise)
    response = adc_response(analog_response(conductance, config, mapped.layout, noise),
                            mapped.layout, config)
    return ProgrammedLayer(
        conductance=conductance, response=response,
        fragment_sign=mapped.fragment_sign, flipped=mapped.flipped,
        weight_scale=mapped.weight_scale,
        adc_lsb=jnp.asarray(adc_lsb_levels(config), conductance.dtype), config=config,
        layout=mapped.layout)


def adc_response(physical: jax.Array, layout: ColumnLayout, config: CrossbarConfig) -> jax.Array:
    """Per-physical-column response (..., X) -> response of each ADC input (..., Y).

    The analog front end is linear, so it folds into the response: a data column minus the
    reference column (G_off baseline) or minus the negative crossbar's column (differential);
    with a digital baseline the G_off current (``off_in_levels`` per driven row) stays in.
    Y = the data columns, plus the unit column for the offset scheme.
    """
    data = layout.data_columns
    if layout.scheme == "differential":
        return physical[..., :data] - physical[..., data:2 * data]
    kept = physical[..., :data]
    if layout.unit_column is not None:
        kept = jnp.concatenate([kept, physical[..., layout.unit_column:layout.unit_column + 1]],
                               axis=-1)
    if layout.reference_column is not None:
        return kept - physical[..., layout.reference_column:layout.reference_column + 1]
    return kept + config.cell.off_in_levels


def read_noise_response(conductance: jax.Array, layout: ColumnLayout,
                        config: CrossbarConfig) -> jax.Array:
    """Squared total conductances (level units) summed over the physical columns behind each
    ADC input (..., Y): the variance of an ADC input under per-cell read noise of relative
    sigma is ``sigma**2 * sum_i digit_i**2 * noise_response_i`` (independent cells add)."""
    squared = (conductance + config.cell.off_in_levels) ** 2
    data = layout.data_columns
    if layout.scheme == "differential":
        return squared[..., :data] + squared[..., data:2 * data]
    kept = squared[..., :data]
    if layout.unit_column is not None:
        kept = jnp.concatenate([kept, squared[..., layout.unit_column:layout.unit_column + 1]],
                               axis=-1)
    if layout.reference_column is not None:
        return kept + squared[..., layout.reference_column:layout.reference_column + 1]
    return kept


def _pad_axis(array: jax.Array, axis: int, size: int) -> jax.Array:
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, size - array.shape[axis])
    return jnp.pad(array, pad)


def _noise_values(noise: NoiseParameters | None, config: CrossbarConfig):
    """(read sigma, ADC noise LSB, ADC offset LSB, any noise drawn?) from config or override."""
    if noise is not None:
        return noise.read_noise_sigma, noise.adc_noise_lsb, noise.adc_offset_lsb, True
    read_sigma, adc_noise = config.device.read_noise_sigma, config.adc.noise_lsb
    return read_sigma, adc_noise, config.adc.offset_lsb, (read_sigma > 0 or adc_noise > 0)


def read_integers(layer: ProgrammedLayer, x_int: jax.Array, key: jax.Array | None = None,
                  noise: NoiseParameters | None = None) -> ReadResult:
    """Emulated product of integer inputs (B, K) with the layer's integer weights.

    With every non-ideality off and enough ADC bits this equals ``x_int @ integer_weights``
    exactly (float32 holds it exactly while the magnitudes stay below 2**24; use
    ``dtype="float64"`` beyond). Read noise and ADC
    noise are drawn from ``key``: batch row ``r``, fragment ``f`` from the stream ``f`` of the
    seeds of ``fold_in(key, r)`` (:func:`random_streams.normal_from_seeds`), so a row's noise
    does not depend on the batch it is in.

    The kernel walks the batch in chunks (``lax.map``) and the fragments one at a time
    (``lax.scan`` over the fragment axis of every per-fragment array): one small matmul gives
    the fragment's ADC inputs, and its ADC and digital back end fuse into one pass over that
    product. One fragment per scan step is the fastest on CPU (benchmarks/bench_read.py: 4.9x
    faster clean and 4.8x faster with read noise than four fragments per step, measured).
    """
    _validate_layer(layer)
    _validate_batch(layer, x_int, "x_int")
    check_key(key, "read key")
    check_noise(noise)
    low, high = _input_range(layer.config)
    if is_concrete(x_int):
        _validate_integers(np.asarray(x_int), low, high)
    return _read_integers(layer, jnp.asarray(x_int), key, noise)


def _input_range(config: CrossbarConfig) -> tuple[int, int]:
    """The integer input range of the configuration (unsigned or two's complement)."""
    bits = config.inputs.bits
    if config.inputs.signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _read_integers(layer: ProgrammedLayer, x_int: jax.Array, key, noise) -> ReadResult:
    """:func:`read_integers` after validation. Rows holding a value outside the input range
    (possible only under ``jit``, where values are not checked) read as NaN."""
    config, layout = layer.config, layer.layout
    inputs = config.inputs
    m, fragments, cycles = layout.fragment_rows, layout.fragments, inputs.cycles
    tiles, data_columns = layout.column_tiles, layout.data_columns
    adc_width = layer.response.shape[-1]
    batch = x_int.shape[0]
    low, high = _input_range(config)
    in_range = jnp.all((x_int >= low) & (x_int <= high), axis=-1)
    x_int = _pad_axis(x_int.astype(jnp.int32), 1, fragments * m)

    if config.zero_skip:
        needed = effective_cycles(x_int, inputs, m)  # (B, F)
    else:
        needed = jnp.full((batch, fragments), cycles, jnp.int32)
    dtype = layer.response.dtype
    significance = cycle_weights(needed, inputs, dtype)  # (B, F, cycles)

    read_sigma, adc_noise, adc_offset, draws = _noise_values(noise, config)
    if draws and key is None:
        raise ValueError("reading with read noise or ADC noise needs a jax.random key")

    flat = (fragments, m, tiles * adc_width)
    response = layer.response.reshape(flat)
    noise_response = (read_noise_response(layer.conductance, layout, config).reshape(flat)
                      if draws else jnp.zeros((fragments,), dtype))
    sign = jnp.repeat(layer.fragment_sign, layout.slices, axis=-1)
    lsb = layer.adc_lsb

    chunk = min(config.chunk_size, batch)
    chunks = -(-batch // chunk)
    n = chunk * cycles
    x_chunks = _pad_axis(x_int, 0, chunks * chunk).reshape(chunks, chunk, fragments * m)
    s_chunks = _pad_axis(significance, 0, chunks * chunk).reshape(chunks, chunk, fragments,
                                                                  cycles)
    rows = jnp.arange(chunks * chunk, dtype=jnp.uint32).reshape(chunks, chunk)

    def chunk_body(args):
        x_chunk, s_chunk, row_ids = args
        digits = input_digits(x_chunk, inputs, dtype)  # (b, cycles, F * m)
        digits = jnp.transpose(digits.reshape(n, fragments, m), (1, 0, 2))  # (F, n, m)
        row_seeds = (jax.vmap(lambda r: random_streams.key_seeds(jax.random.fold_in(key, r)))(
            row_ids)[:, None, :] if draws else None)  # (b, 1, 2): one stream per row

        def fragment_body(carry, per_fragment):
            acc, acc_unit = carry
            f, d, block, squares, fragment_sign, fragment_flipped, weight = per_fragment
            if draws and inputs.max_digit == 1:  # digits are 0/1: d * d == d, one product
                product, variance = jnp.split(d @ jnp.concatenate([block, squares], -1), 2, -1)
            else:
                product = d @ block  # (n, tiles * adc_width)
                if draws:
                    variance = (d * d) @ squares
            adc_in = product
            if draws:
                std_lsb = jnp.sqrt(variance * read_sigma ** 2 / lsb ** 2 + adc_noise ** 2)
                normal = random_streams.normal_from_seeds(  # stream f of each row's seeds
                    row_seeds, (cycles, tiles * adc_width), stream=f, dtype=dtype)
                adc_in = adc_in + std_lsb * lsb * normal.reshape(n, -1)
            values = convert(adc_in.reshape(n, tiles, adc_width), lsb, config, None, adc_offset)
            values, unit = _digital_back_end(values, jnp.sum(d, axis=-1), fragment_sign,
                                             fragment_flipped, layout, config)
            weight = weight[..., None, None]  # (b, cycles, 1, 1)
            acc = acc + weight * values.reshape(chunk, cycles, tiles, data_columns)
            if unit is not None:
                acc_unit = acc_unit + weight[..., 0] * unit.reshape(chunk, cycles, tiles)
            return (acc, acc_unit), None

        init = (jnp.zeros((chunk, cycles, tiles, data_columns), dtype),
                jnp.zeros((chunk, cycles, tiles), dtype))
        per_fragment = (jnp.arange(fragments, dtype=jnp.uint32), digits, response,
                        noise_response, sign, layer.flipped, jnp.swapaxes(s_chunk, 0, 1))
        (acc, acc_unit), _ = jax.lax.scan(fragment_body, init, per_fragment)
        return jnp.sum(acc, axis=1), jnp.sum(acc_unit, axis=1)

    acc, acc_unit = jax.lax.map(chunk_body, (x_chunks, s_chunks, rows))
    acc = acc.reshape(chunks * chunk, tiles, layout.weights_per_tile, layout.slices)[:batch]
    slice_significance = jnp.asarray(
        [2.0 ** (config.cell.bits_per_cell * s) for s in range(layout.slices)], dtype)
    out = jnp.einsum("btws,s->btw", acc, slice_significance)
    if layout.scheme == "offset":
        offset = 2.0 ** (config.weights.bits - 1)
        out = out - offset * acc_unit.reshape(chunks * chunk, tiles)[:batch, :, None]
    out = out.reshape(batch, layout.padded_out_features)[:, :layout.out_features]
    # an uncalibrated ADC (NaN LSB) already gives NaN; out-of-range rows are marked here
    out = jnp.where(in_range[:, None], out, jnp.nan)
    return ReadResult(out, _counts(needed, layout, cycles))


def _digital_back_end(values, digit_sum, sign, flipped, layout: ColumnLayout,
                      config: CrossbarConfig):
    """Digital back end of one fragment: converted values (n, T, Y) -> signed slice-column
    values (n, T, W*S) and, for the offset scheme, the unit column's count (n, T). Removes a digital baseline, undoes the flip encoding, applies fragment signs."""
    if config.mapping.baseline == "digital" and layout.scheme != "differential":
        values = values - config.cell.off_in_levels * digit_sum[..., None, None]
    unit = None
    if layout.unit_column is not None:
        unit, values = values[..., -1], values[..., :-1]
        if config.mapping.flip_encoding:
            values = jnp.where(flipped > 0, config.cell.max_level * unit[..., None] - values,
                               values)
    if layout.scheme == "polarized":
        values = values * sign
    return values, unit


def _counts(needed: jax.Array, layout: ColumnLayout, cycles: int) -> ReadCounts:
    per_cycle = layout.column_tiles * layout.adc_inputs_per_tile
    run = jnp.sum(needed)
    full = jnp.asarray(needed.size * cycles, jnp.int32)
    return ReadCounts(run, full, run * per_cycle, full * per_cycle, jnp.zeros((), jnp.int32))


def _validate_layer(layer) -> None:
    if isinstance(layer, MappedWeights):
        raise TypeError("this needs a ProgrammedLayer: program the mapped weights first "
                        "(layer = program(mapped, key))")
    if not isinstance(layer, ProgrammedLayer):
        raise TypeError(f"layer must be a ProgrammedLayer (from program()), got "
                        f"{type(layer).__name__}")


def _validate_batch(layer: ProgrammedLayer, x, name: str) -> None:
    """Shape (batch >= 1, in_features) and a real dtype (values are checked by the callers)."""
    if isinstance(x, (str, bytes)) or not hasattr(x, "shape") and not isinstance(
            x, (list, tuple, np.ndarray)):
        raise TypeError(f"{name} must be an array of shape (batch, {layer.layout.in_features}),"
                        f" got {type(x).__name__}")
    shape = np.shape(x)
    if len(shape) != 2 or shape[1] != layer.layout.in_features:
        raise ValueError(f"{name} must have shape (batch, {layer.layout.in_features}), "
                         f"got {shape}" + ("; add a batch axis (x[None])" if len(shape) == 1
                                           else ""))
    if shape[0] < 1:
        raise ValueError(f"{name}: the input batch is empty (shape {shape})")
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype}")


def _validate_integers(array: np.ndarray, low: int, high: int) -> None:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise TypeError(f"x_int must hold integers, got dtype {array.dtype} with "
                            f"non-integer values; use read() for float inputs")
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f"x_int values must lie in the configured input range [{low}, {high}]"
                         f", got [{array.min()}, {array.max()}]")


def _validate_scale_type(scale) -> None:
    """``scale`` is a real number or a real array (its shape and values are checked after)."""
    if isinstance(scale, (str, bytes, bool)):
        raise TypeError(f"scale must be a real number or array (the input quantization step), "
                        f"got {type(scale).__name__} {scale!r:.60}")
    try:
        dtype = scale.dtype if hasattr(scale, "dtype") else np.asarray(scale).dtype
    except (TypeError, ValueError) as error:
        raise TypeError(f"scale must be a real number or array (the input quantization step), "
                        f"got {type(scale).__name__}") from error
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"scale must be a real number or array (the input quantization step), "
                        f"got {type(scale).__name__} of dtype {dtype}")


def _validate_inputs(layer: ProgrammedLayer, x, scale, check_adc: bool = True) -> None:
    _validate_layer(layer)
    _validate_batch(layer, x, "inputs")
    signed = layer.config.inputs.signed
    if is_concrete(x):
        array = np.asarray(x)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"inputs contain {int(np.sum(~np.isfinite(array)))} NaN or "
                             f"infinite values; all must be finite")
        if not signed and np.any(array < 0):
            raise ValueError(
                f"inputs hold {int(np.sum(array < 0))} negative values but the configuration "
                f"reads unsigned inputs (they would clip to 0); use InputConfig(signed=True) "
                f"(or preset(..., signed_inputs=True)) for signed activations")
    if scale is not None:
        batch = np.shape(x)[0]
        _validate_scale_type(scale)
        if np.shape(scale) not in ((), (batch, 1), (1, 1)):
            raise ValueError(f"scale must be a scalar or shaped ({batch}, 1) (one input step "
                             f"per batch row), got {np.shape(scale)}")
        if is_concrete(scale):
            values = np.asarray(scale, np.float64)
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise ValueError(f"scale (the input quantization step) must be finite and "
                                 f"> 0, got {values.ravel()[:4]}")
    if check_adc and is_concrete(layer.adc_lsb) and np.any(np.isnan(np.asarray(layer.adc_lsb))):
        raise ValueError("this layer's ADC range is 'calibrated' but not set yet: call "
                         "layer = calibrate_adc(layer, x_int) on a few batches first, or use "
                         "ADCConfig(range='fixed' or 'worst_case')")


def read(layer: ProgrammedLayer, x: jax.Array, key: jax.Array | None = None,
         noise: NoiseParameters | None = None, scale: jax.Array | None = None) -> ReadResult:
    """Emulated ``x @ weights`` for a float input batch (B, K) -> outputs (B, N).

    Inputs are quantized with ``scale`` (shape () or (B, 1)) or, by default, the configured
    dynamic scale; the integer result is rescaled by the input and weight scales.

    Bad values raise outside ``jit`` (NaN or infinite inputs, negative inputs to an unsigned
    configuration, a scale that is not > 0, an uncalibrated ADC). Inside ``jit`` values cannot
    be checked, so they are propagated: a row with a non-finite input, a non-positive or
    non-finite scale, or an uncalibrated ADC reads as NaN, and ``counts.negative_inputs``
    counts negative inputs that an unsigned configuration clipped to 0.
    """
    _validate_inputs(layer, x, scale)
    check_key(key, "read key")
    check_noise(noise)
    dtype = layer.config.float_dtype
    x = jnp.asarray(x, dtype)
    step = input_scale(x, layer.config.inputs) if scale is None else jnp.asarray(scale, dtype)
    finite = jnp.all(jnp.isfinite(x), axis=-1, keepdims=True) & jnp.isfinite(step) & (step > 0)
    x_int = quantize_inputs(jnp.where(finite, x, 0.0), jnp.where(finite, step, 1.0),
                            layer.config.inputs)
    result = _read_integers(layer, x_int, key, noise)
    outputs = jnp.where(finite, result.outputs * step * layer.weight_scale, jnp.nan)
    negative = (jnp.zeros((), jnp.int32) if layer.config.inputs.signed
                else jnp.sum(x < 0, dtype=jnp.int32))
    return ReadResult(outputs, result.counts._replace(negative_inputs=negative))


def adc_inputs(layer: ProgrammedLayer, x_int: jax.Array) -> jax.Array:
    """Noise-free ADC inputs (level units) of every cycle and fragment, for ADC calibration and
    range studies: (B, cycles, F, column_tiles, Y)."""
    config, layout = layer.config, layer.layout
    m = layout.fragment_rows
    x_int = _pad_axis(x_int.astype(jnp.int32), 1, layout.fragments * m)
    digits = input_digits(x_int, config.inputs, layer.response.dtype)
    digits = digits.reshape(digits.shape[:2] + (layout.fragments, m))
    return jnp.einsum("bkfm,fmtx->bkftx", digits, layer.response)


def effective_weights(layer: ProgrammedLayer) -> jax.Array:
    """The (K, N) float weight matrix the programmed array realizes with an ideal ADC.

    Reads every cell's response (programmed conductance, variation, faults and wires included)
    back into weight units: slice significance, fragment sign, flip and offset decoding, and
    the weight scale. Without non-idealities this is ``integer_weights * weight_scale``. Useful
    for fast noise-aware training (a float matmul with the programmed weights) and for
    straight-through gradients of :func:`read`.
    """
    _validate_layer(layer)
    config, layout = layer.config, layer.layout
    f, m, tiles, _ = layer.response.shape
    response = layer.response
    if config.mapping.baseline == "digital" and layout.scheme != "differential":
        response = response - config.cell.off_in_levels  # removed digitally after the ADC
    data = response[..., :layout.data_columns]
    if layout.unit_column is not None and config.mapping.flip_encoding:
        unit = response[..., -1:]
        data = jnp.where(layer.flipped[:, None] > 0, config.cell.max_level * unit - data, data)
    data = data.reshape(f, m, tiles, layout.weights_per_tile, layout.slices)
    significance = jnp.asarray([2.0 ** (config.cell.bits_per_cell * s)
                                for s in range(layout.slices)], data.dtype)
    weights = jnp.einsum("fmtws,s->fmtw", data, significance)
    if layout.scheme == "polarized":
        weights = weights * layer.fragment_sign[:, None]
    if layout.scheme == "offset":
        weights = weights - 2.0 ** (config.weights.bits - 1) * response[..., -1:]
    weights = weights.reshape(f * m, layout.padded_out_features)
    return weights[:layout.in_features, :layout.out_features] * layer.weight_scale


def calibrate_adc(layer: ProgrammedLayer, x: jax.Array, percentile: float = 99.99, *,
                  scale: jax.Array | None = None) -> ProgrammedLayer:
    """Set the ADC LSB from data (``ADCConfig(range="calibrated")``): the full scale covers
    ``percentile`` % of the noise-free ADC inputs that the inputs ``x`` (B, K) produce.

    ``x`` of an integer dtype is taken as integer inputs (as :func:`read_integers`); a
    floating ``x`` is quantized as :func:`read` would (``scale`` or the dynamic scale).
    Returns a new layer; reads then clip what lies above the full scale."""
    _validate_layer(layer)
    _validate_batch(layer, x, "x")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not (
            0 < percentile <= 100):
        raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")
    if layer.config.adc.range != "calibrated":
        raise ValueError("calibrate_adc needs ADCConfig(range='calibrated'), got range="
                         f"{layer.config.adc.range!r}")
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if np.issubdtype(dtype, np.integer):
        if is_concrete(x):
            _validate_integers(np.asarray(x), *_input_range(layer.config))
        x_int = jnp.asarray(x)
    else:
        _validate_inputs(layer, x, scale, check_adc=False)
        x = jnp.asarray(x, layer.config.float_dtype)
        step = input_scale(x, layer.config.inputs) if scale is None else jnp.asarray(
            scale, x.dtype)
        x_int = quantize_inputs(x, step, layer.config.inputs)
    lsb = calibrated_lsb(adc_inputs(layer, x_int), layer.config, percentile)
    return dataclasses.replace(layer, adc_lsb=lsb)
