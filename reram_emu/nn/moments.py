"""The output-noise model of the noise-aware forward: the mean and variance that read noise
and ADC noise add to a bit-serial read's outputs (:func:`output_noise_moments`), so training
can draw them at the cost of one Gaussian per output instead of one per conversion."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..config import CrossbarConfig
from ..converters import adc_lsb_levels
from ..crossbar import read_noise_response
from ..quantization import quantize_inputs

__all__ = ["output_noise_moments", "adc_rounding_moments"]


def _slice_significance(config: CrossbarConfig, power: int) -> jax.Array:
    bits = config.cell.bits_per_cell
    return jnp.asarray([2.0 ** (power * bits * s) for s in range(config.weight_slices)])


def adc_rounding_moments(sigma_lsb):
    """Error moments of an ADC converting an integer-valued input with Gaussian noise of
    ``sigma_lsb`` LSB and rounding: ``(var_interior, mean_at_zero, var_at_zero)``.

    Interior (``0 < v < top``): the error ``round(sigma n)`` has variance
    ``sum_k k**2 P(k)``, ``P(k) = Phi((k + 1/2) / sigma) - Phi((k - 1/2) / sigma)``, less than
    ``sigma**2`` (rounding swallows noise below half an LSB). At ``v = 0`` an unsigned ADC clips
    negative codes, so the error is ``max(round(sigma n), 0)``: a positive bias
    ``sum_{k>=1} k P(k)`` and the matching variance.
    """
    sigma = jnp.maximum(jnp.asarray(sigma_lsb, jnp.float32), 1e-6)
    k = jnp.arange(1, 13, dtype=jnp.float32)
    p = (jax.scipy.stats.norm.cdf((k + 0.5) / sigma)
         - jax.scipy.stats.norm.cdf((k - 0.5) / sigma))
    second = jnp.sum(k * k * p)
    mean0 = jnp.sum(k * p)
    return 2.0 * second, mean0, second - mean0 ** 2


def _fragment_cycle_sums(x_int: jax.Array, config: CrossbarConfig, fragments: int):
    """Per row and fragment, ``sum_{k < c_f} (2**(dac k))**p`` for p = 1 and 2, where ``c_f``
    is the number of input cycles fragment f runs (zero-skipping): two (R, F) arrays."""
    inputs = config.inputs
    m = config.geometry.fragment_rows
    rows = x_int.shape[0]
    padded = jnp.pad(x_int, ((0, 0), (0, fragments * m - x_int.shape[1])))
    if config.zero_skip:
        widest = jnp.max(padded.reshape(rows, fragments, m), axis=-1)
        _, exponent = jnp.frexp(widest.astype(jnp.float32))  # bit length of positive ints
        bits = jnp.where(widest > 0, exponent, 0)
        cycles = -(-bits // inputs.dac_bits)
    else:
        cycles = jnp.full((rows, fragments), inputs.cycles, jnp.int32)
    base = 2.0 ** inputs.dac_bits
    cycles = cycles.astype(jnp.float32)
    return (base ** cycles - 1) / (base - 1), (base ** (2 * cycles) - 1) / (base ** 2 - 1)


def _squared_digit_sum(x_int: jax.Array, config: CrossbarConfig) -> jax.Array:
    """``h(x) = sum_k (2**(dac k))**2 digit_k(x)**2`` elementwise (R, K), float32."""
    inputs = config.inputs
    unsigned = jnp.bitwise_and(x_int, 2 ** inputs.bits - 1)
    h = jnp.zeros(x_int.shape, jnp.float32)
    for c in range(inputs.cycles):
        digit = jnp.bitwise_and(jnp.right_shift(unsigned, inputs.dac_bits * c),
                                inputs.max_digit).astype(jnp.float32)
        h = h + digit * digit * 2.0 ** (2 * inputs.dac_bits * c)
    return h


def output_noise_moments(programmed, mapped, x: jax.Array, scale: jax.Array, read_sigma,
                         adc_noise_lsb) -> tuple[jax.Array, jax.Array]:
    """Mean and standard deviation (output units) of what the bit-serial read adds to
    ``x @ w_realized`` through read noise and ADC noise: two (R, N) arrays for ``x`` (R, K)
    quantized with ``scale``. ``read_sigma`` / ``adc_noise_lsb``: None to leave one out.

    Read noise: each driven cell's conductance is read as ``G (1 + sigma n)`` anew per read, so
    an output's variance (integer units) is ``sigma**2 sum_i h(x_i) sum_s (2**(b s))**2 V_{i,s}``
    with ``h(x) = sum_cycles (2**(dac k))**2 digit_k(x)**2`` (every cycle has its own noise)
    and ``V`` the squared total conductance behind the ADC input (data and reference cell,
    :func:`reram_emu.crossbar.read_noise_response`). Exact in distribution up to the ADC.

    ADC noise: each conversion a fragment runs (``c_f`` cycles with zero-skipping) adds Gaussian
    noise of ``adc_noise_lsb`` LSB *before rounding*, so what reaches the output is the rounding
    error's moments (:func:`adc_rounding_moments`), weighted by ``lsb * 2**(b s) * 2**(dac k)``.
    A fragment whose slice column holds only level-0 cells converts exactly 0 on every cycle,
    where an unsigned ADC clips the negative codes (a positive bias, applied with the
    fragment's sign); the other conversions are taken as interior (their input-dependent zeros
    are not resolved: an overestimate of their noise), with the rounding moments when the LSB
    is one level (integer sums) and plain ``adc_noise_lsb**2`` otherwise. Not modelled: the
    deterministic rounding of non-integer sums (device variation), clipping above the full
    scale, the ADC offset. Checked against the emulated read (``tests/test_models.py``) and, for
    LeNet-5 under 0.25 LSB ADC noise, a noisy forward at 96.3 % vs 96.4 % emulated.
    """
    config, layout = programmed.config, programmed.layout
    dtype = x.dtype
    k, n = layout.in_features, layout.out_features
    f, m = layout.fragments, layout.fragment_rows
    x_int = quantize_inputs(jax.lax.stop_gradient(x), scale, config.inputs)
    variance = jnp.zeros((x.shape[0], n), dtype)
    mean = jnp.zeros((x.shape[0], n), dtype)
    if read_sigma is not None:
        h = _squared_digit_sum(x_int, config)
        v = read_noise_response(programmed.conductance, layout, config)
        v = v[..., :layout.data_columns]  # (F, m, T, W*S); ISAAC's unit column not modelled
        v = v.reshape(f, m, layout.column_tiles, layout.weights_per_tile, layout.slices)
        v = jnp.einsum("fmtws,s->fmtw", v, _slice_significance(config, 2).astype(dtype))
        v = v.reshape(f * m, -1)[:k, :n]
        variance = variance + read_sigma ** 2 * (h @ v)
    if adc_noise_lsb is not None:
        var1, mean0, var0 = adc_rounding_moments(adc_noise_lsb)
        if adc_lsb_levels(config) != 1.0:
            var1 = jnp.asarray(adc_noise_lsb, dtype) ** 2  # inputs not on the code grid
        levels = mapped.levels[..., :layout.data_columns]
        empty = jnp.all(levels == 0, axis=1).reshape(f, -1, layout.slices)[:, :n]  # (F, N, S)
        if not (config.adc.clip and layout.scheme in ("polarized", "offset")):
            empty = jnp.zeros_like(empty)  # signed or unclipped codes: no gate at zero
        empty = empty.astype(dtype)
        sig1, sig2 = (_slice_significance(config, 1).astype(dtype),
                      _slice_significance(config, 2).astype(dtype))
        per_var = jnp.einsum("fns,s->fn", empty * var0 + (1 - empty) * var1, sig2)
        sign = mapped.fragment_sign.reshape(f, -1)[:, :n]
        per_mean = sign * jnp.einsum("fns,s->fn", empty, sig1) * mean0
        sum1, sum2 = _fragment_cycle_sums(x_int, config, f)
        lsb = programmed.adc_lsb.astype(dtype)
        variance = variance + lsb ** 2 * (sum2 @ per_var)
        mean = mean + lsb * (sum1 @ per_mean)
    units = scale * programmed.weight_scale
    return mean * units, jnp.sqrt(variance) * units
