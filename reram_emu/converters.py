"""Converters: the per-fragment ADC (range, LSB, clipping, noise, offset).

The 1-bit (or multi-bit) input DAC is the digit decomposition in
:func:`reram_emu.quantization.input_digits`. ADC inputs and outputs here are in level units
(one level unit = one conductance step at the read voltage, ``CellConfig.level_current_amperes``
amperes). A converted value is ``code * lsb`` with an integer code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .config import CrossbarConfig

__all__ = ["code_range", "worst_case_input", "worst_case_lsb_levels", "adc_lsb_levels", "convert",
           "calibrated_lsb"]


def code_range(config: CrossbarConfig) -> tuple[int, int]:
    """Lowest and highest ADC code: signed for the differential scheme, else unsigned."""
    bits = config.adc.bits
    if config.mapping.scheme == "differential":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def worst_case_input(config: CrossbarConfig) -> float:
    """Largest magnitude an ADC input can reach for one fragment (level units).

    ``m * max_level * max_digit`` (one fragment, all rows at the top DAC level, all cells at the
    top level); halved (floor) by ISAAC's flip encoding; plus the G_off baseline of m active rows
    when the baseline is removed digitally after the ADC.
    """
    m = config.geometry.fragment_rows
    per_row = config.cell.max_level
    if config.mapping.flip_encoding:
        worst = (m * per_row) // 2
    else:
        worst = m * per_row
    worst *= config.inputs.max_digit
    if config.mapping.baseline == "digital" and config.mapping.scheme != "differential":
        worst += m * config.inputs.max_digit * config.cell.off_in_levels
    return float(worst)


def worst_case_lsb_levels(config: CrossbarConfig) -> float:
    """The smallest power-of-two LSB >= 1 (level units) with ``top_code * lsb >=`` the
    fragment's worst-case sum: nothing clips, and the read is exact when the ADC has enough
    bits (a shift in the digital back end)."""
    _, top = code_range(config)
    ratio = worst_case_input(config) / top
    return float(2 ** max(0, math.ceil(math.log2(ratio)))) if ratio > 1 else 1.0


def adc_lsb_levels(config: CrossbarConfig) -> float:
    """The ADC's LSB in level units as programmed (before any calibration).

    ``worst_case``: :func:`worst_case_lsb_levels`. ``fixed``: ``full_scale_levels / top_code``
    (default: one level per code). ``calibrated``: NaN, the mark of an ADC whose range is still
    to be set from data (:func:`reram_emu.crossbar.calibrate_adc`); reading such a layer raises
    outside ``jit`` and gives NaN outputs inside it.
    """
    _, top = code_range(config)
    if config.adc.range == "fixed":
        full_scale = config.adc.full_scale_levels
        return 1.0 if full_scale is None else full_scale / top
    if config.adc.range == "calibrated":
        return math.nan
    return worst_case_lsb_levels(config)


def convert(adc_input: jax.Array, lsb, config: CrossbarConfig, noise_std_lsb=None,
            offset_lsb=0.0, key: jax.Array | None = None) -> jax.Array:
    """Quantize ADC inputs (level units) to ``code * lsb`` (level units).

    ``code = round(adc_input / lsb + offset_lsb + noise_std_lsb * n)``, clipped to the code range
    when ``config.adc.clip``; n ~ N(0, 1) from ``key`` when ``noise_std_lsb`` is given (a scalar
    or an array broadcasting with ``adc_input``, e.g. ADC noise combined with read noise).
    """
    value = adc_input / lsb + offset_lsb
    if noise_std_lsb is not None:
        value = value + noise_std_lsb * jax.random.normal(key, adc_input.shape, adc_input.dtype)
    code = jnp.round(value)
    if config.adc.clip:
        low, high = code_range(config)
        code = jnp.clip(code, low, high)
    return code * lsb


def calibrated_lsb(adc_inputs: jax.Array, config: CrossbarConfig,
                   percentile: float = 99.99) -> jax.Array:
    """LSB (level units) whose full scale covers ``percentile`` % of observed |ADC inputs|.

    Never finer than needed for integer sums (at least ``worst_case / top`` is not forced; the
    LSB is the observed full scale divided by the top code, floored at 1/top to stay positive).
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    _, top = code_range(config)
    full_scale = jnp.percentile(jnp.abs(adc_inputs), percentile)
    return jnp.maximum(full_scale / top, 1.0 / top).astype(adc_inputs.dtype)
