"""Crossbar layers: dense and convolution (as im2col) that run ideally, noise-aware, or through
the emulated crossbar pipeline, with the same parameters.

Every crossbar layer owns one weight matrix ``w`` of shape (K, N) = (in_features,
out_features), the convention of the whole package (a fragment is ``m`` consecutive rows of one
column), and a bias ``b`` (N,) added digitally after the crossbar.

Convolution as im2col
---------------------
A convolution with a (kh, kw) kernel over C input channels becomes a GEMM with
K = kh * kw * C rows: every output pixel's receptive field is unrolled into one input vector.
The *row order* decides which weights of a filter share a fragment (FORMS, ISCA 2021, compares
both):

* ``"channel"`` (channel-major fragments): row ``(i * kw + j) * C + c``, the channel varies
  fastest, so a fragment of m rows runs along the input channels at one kernel position (the
  NHWC im2col order);
* ``"width"`` (width-major fragments): row ``(c * kh + i) * kw + j``, the kernel column varies
  fastest, so a fragment runs along the kernel width (then height) of one channel (the
  PyTorch OIHW flattening order).

The same order is used by the forward pass, the polarizer (:mod:`reram_emu.admm`) and the
mapping, so a weight matrix polarized in one order is mapped in that order. With C = 1 both
orders coincide.

Runners
-------
A model's ``apply`` calls ``runner(index, name, x, w)`` for every crossbar product, ``x``
(R, K) -> (R, N). Runners here:

* :class:`IdealRunner`: ``x @ w`` in float (training, the float baseline);
* :class:`NoisyRunner`: the noise-aware training forward: the weights are mapped
  (8-bit quantization, fragment signs), programmed with a fresh key (device variation, stuck-at
  faults, finite levels, and IR drop once :func:`reram_emu.crossbar.analog_response` models it),
  read back with :func:`reram_emu.crossbar.effective_weights` and used through a
  straight-through estimator so the gradient reaches ``w``; read noise and ADC noise are added
  at the output with the variance the bit-serial read would give them (see
  :func:`output_noise_moments`, which says what it leaves out);
* :class:`EmulatedRunner`: the full bit-serial emulated read (:func:`reram_emu.read`), not
  differentiable, used for evaluation;
* :class:`RecordingRunner`: records the inputs' statistics for input-scale calibration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .config import CrossbarConfig, NoiseParameters
from .converters import adc_lsb_levels
from .crossbar import effective_weights, program, read, read_noise_response
from .mapping import encode_weights
from .quantization import quantize_inputs

__all__ = [
    "ROW_ORDERS", "DenseSpec", "ConvSpec", "init_layer", "im2col", "conv_output_shape",
    "conv_weight_to_hwio", "max_pool", "IdealRunner", "NoisyRunner", "EmulatedRunner",
    "RecordingRunner", "scales_from_records", "layer_config", "noisy_weights",
    "output_noise_moments", "adc_rounding_moments", "ste",
]

ROW_ORDERS = ("channel", "width")
_ROW_ORDER_ALIASES = {"channel": "channel", "channel_major": "channel", "channel-major": "channel",
                      "width": "width", "width_major": "width", "width-major": "width"}


def _row_order(value: str) -> str:
    if value not in _ROW_ORDER_ALIASES:
        raise ValueError(f"row_order must be one of {sorted(_ROW_ORDER_ALIASES)}, got {value!r}")
    return _ROW_ORDER_ALIASES[value]


@dataclass(frozen=True)
class DenseSpec:
    """A fully connected crossbar layer: (B, in_features) -> (B, out_features)."""

    in_features: int
    out_features: int

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.in_features, self.out_features)


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution mapped as im2col onto crossbars, channels-last (B, H, W, C).

    Attributes:
      in_channels, out_channels: C and N.
      kernel: (kh, kw).
      stride: the same in both directions.
      padding: ``"SAME"`` (output H/stride) or ``"VALID"``.
      row_order: ``"channel"`` or ``"width"`` (see the module docstring); aliases
        ``"channel_major"`` and ``"width_major"`` are accepted.
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (5, 5)
    stride: int = 1
    padding: str = "VALID"
    row_order: str = "channel"

    def __post_init__(self):
        object.__setattr__(self, "row_order", _row_order(self.row_order))
        object.__setattr__(self, "kernel", tuple(int(k) for k in self.kernel))
        if self.padding not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME' or 'VALID', got {self.padding!r}")

    @property
    def in_features(self) -> int:
        return self.kernel[0] * self.kernel[1] * self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.in_features, self.out_features)


def init_layer(key: jax.Array, spec: DenseSpec | ConvSpec, dtype=jnp.float32) -> dict:
    """He-normal weights (K, N) (fan-in K) and zero bias (N,): ``{"w": ..., "b": ...}``."""
    k, n = spec.weight_shape
    w = jax.random.normal(key, (k, n), dtype) * jnp.sqrt(2.0 / k).astype(dtype)
    return {"w": w, "b": jnp.zeros((n,), dtype)}


def _padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "VALID":
        return (0, 0)
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)


def conv_output_shape(spec: ConvSpec, height: int, width: int) -> tuple[int, int]:
    """Output (H_out, W_out) of the convolution on an (height, width) input."""
    (kh, kw), s = spec.kernel, spec.stride
    ph, pw = _padding(height, kh, s, spec.padding), _padding(width, kw, s, spec.padding)
    return ((height + sum(ph) - kh) // s + 1, (width + sum(pw) - kw) // s + 1)


def im2col(x: jax.Array, spec: ConvSpec) -> jax.Array:
    """Unroll receptive fields: (B, H, W, C) -> (B, H_out, W_out, K), rows in ``spec.row_order``.

    ``im2col(x, spec) @ w`` is the convolution with the (K, N) weight matrix ``w``.
    """
    if x.ndim != 4 or x.shape[-1] != spec.in_channels:
        raise ValueError(f"expected (B, H, W, {spec.in_channels}) inputs, got {x.shape}")
    (kh, kw), s = spec.kernel, spec.stride
    _, h, w, c = x.shape
    ph, pw = _padding(h, kh, s, spec.padding), _padding(w, kw, s, spec.padding)
    x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho, wo = conv_output_shape(spec, h, w)
    cols = [x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
            for i in range(kh) for j in range(kw)]
    patches = jnp.stack(cols, axis=3)  # (B, ho, wo, kh*kw, C)
    if spec.row_order == "width":
        patches = jnp.swapaxes(patches, 3, 4)  # (B, ho, wo, C, kh*kw)
    return patches.reshape(x.shape[0], ho, wo, kh * kw * c)


def conv_weight_to_hwio(w: jax.Array, spec: ConvSpec) -> jax.Array:
    """The (K, N) im2col matrix as a (kh, kw, C, N) kernel for ``lax.conv_general_dilated``."""
    (kh, kw), c = spec.kernel, spec.in_channels
    if spec.row_order == "channel":
        return w.reshape(kh, kw, c, -1)
    return jnp.transpose(w.reshape(c, kh, kw, -1), (1, 2, 0, 3))


def max_pool(x: jax.Array, size: int = 2) -> jax.Array:
    """Non-overlapping max pooling of (B, H, W, C) by ``size`` (floor)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                                 (1, size, size, 1), "VALID")


def ste(x: jax.Array, x_forward: jax.Array) -> jax.Array:
    """Straight-through estimator: the value of ``x_forward``, the gradient of ``x``."""
    return x + jax.lax.stop_gradient(x_forward - x)


# --------------------------------------------------------------------------- configurations


def layer_config(config: CrossbarConfig, out_features: int, trim_columns: bool = True
                 ) -> CrossbarConfig:
    """The configuration one layer is emulated with.

    With ``trim_columns`` a layer whose slice columns do not fill a crossbar tile
    (``out_features * slices < columns``) is emulated on a tile trimmed to the columns it uses.
    This is an emulation shortcut, not a different design: the unused columns of the full tile
    hold zero weights and contribute nothing to the outputs (outputs and their noise
    distributions are the same), but :func:`reram_emu.read` computes every column of a tile, so
    a 6-filter convolution would otherwise cost 128 / 24 = 5.3x more. Hardware counts
    (``ReadCounts``) then count the used columns only.
    """
    if not trim_columns:
        return config
    slices = config.weight_slices
    needed = out_features * slices
    if needed >= config.geometry.columns:
        return config
    geometry = dataclasses.replace(config.geometry, columns=needed)
    return config.replace(geometry=geometry)


def _configs_for(config: CrossbarConfig | Mapping[str, CrossbarConfig], name: str
                 ) -> CrossbarConfig:
    if isinstance(config, CrossbarConfig):
        return config
    return config[name]


# --------------------------------------------------------------------------- runners


class IdealRunner:
    """``x @ w`` in float: the float model."""

    def __call__(self, index: int, name: str, x: jax.Array, w: jax.Array) -> jax.Array:
        return x @ w


class RecordingRunner:
    """Ideal product that records, per layer, the inputs it saw (for input-scale calibration).

    Create it inside the traced function and return ``runner.records`` from it.
    """

    def __init__(self, percentile: float = 99.99):
        self.percentile = percentile
        self.records: dict[str, jax.Array] = {}

    def __call__(self, index, name, x, w):
        self.records[name] = jnp.percentile(jnp.abs(x), self.percentile)
        return x @ w


def noisy_weights(w: jax.Array, config: CrossbarConfig, key: jax.Array,
                  noise: NoiseParameters | None = None):
    """Program ``w`` (K, N) with ``key`` and read its realized float weights back.

    Returns ``(w_forward, programmed, mapped)``: ``w_forward`` has the value of
    ``effective_weights(program(encode_weights(w)))`` (8-bit quantization, the fragment-sign
    projection of the polarized scheme, variation, faults, finite levels, the analog response)
    and the gradient of ``w`` (straight-through); ``programmed`` is the ProgrammedLayer and
    ``mapped`` the MappedWeights (target levels).
    """
    mapped = encode_weights(jax.lax.stop_gradient(w), config)
    programmed = program(mapped, key, noise)
    return ste(w, effective_weights(programmed).astype(w.dtype)), programmed, mapped


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


class NoisyRunner:
    """Noise-aware training forward (differentiable through a straight-through estimator).

    For every layer: ``w`` is mapped and programmed with ``fold_in(key, index)`` (a fresh key
    per step gives fresh device variation per step), the product uses the realized weights
    with the gradient of ``w``, and, when ``read_noise``/``adc_noise`` are on and the
    configuration (or ``noise``) has them, Gaussian output noise with the bit-serial read's
    mean and variance is added (:func:`output_noise_moments`). The input scale of that noise
    model is the calibrated one from ``scales`` or the batch's max / top code.

    ``exact_read=True``: the forward value is the full emulated read
    (:func:`reram_emu.read`: bit-serial inputs, per-fragment ADC quantization and clipping,
    read and ADC noise, zero-skipping) and the gradient is that of ``x @ w_realized``: the ADC
    quantization with a straight-through gradient, exactly, at the emulator's cost (practical
    for small models or short fine-tuning; the output-noise model is then not used).

    Args:
      config: one CrossbarConfig for every layer or a mapping name -> config.
      key: this step's key.
      noise: traced NoiseParameters overriding the configuration's numbers.
    """

    def __init__(self, config, key: jax.Array, noise: NoiseParameters | None = None,
                 scales: Mapping[str, jax.Array] | None = None, read_noise: bool = True,
                 adc_noise: bool = True, exact_read: bool = False):
        self.config, self.key, self.noise, self.scales = config, key, noise, scales
        self.read_noise, self.adc_noise = read_noise, adc_noise
        self.exact_read = exact_read

    def __call__(self, index, name, x, w):
        config = _configs_for(self.config, name)
        key = jax.random.fold_in(self.key, index)
        program_key, output_key = jax.random.split(key)
        w_forward, programmed, mapped = noisy_weights(w, config, program_key, self.noise)
        y = x @ w_forward
        if self.exact_read:
            scale = None if self.scales is None else self.scales.get(name)
            y_read, _ = read(programmed, jax.lax.stop_gradient(x), key=output_key,
                             noise=self.noise, scale=scale)
            return ste(y, y_read.astype(y.dtype))
        if self.noise is not None:
            read_sigma, adc_lsb = self.noise.read_noise_sigma, self.noise.adc_noise_lsb
        else:
            read_sigma = config.device.read_noise_sigma or None
            adc_lsb = config.adc.noise_lsb or None
        read_sigma = read_sigma if self.read_noise else None
        adc_lsb = adc_lsb if self.adc_noise else None
        if read_sigma is None and adc_lsb is None:
            return y
        if self.scales is not None and name in self.scales:
            scale = self.scales[name]
        else:
            top = 2 ** config.inputs.bits - 1
            scale = jnp.maximum(jnp.max(jax.lax.stop_gradient(x)), 1e-12) / top
        mean, std = output_noise_moments(programmed, mapped, x, scale, read_sigma, adc_lsb)
        draw = mean + std * jax.random.normal(output_key, y.shape, y.dtype)
        return y + jax.lax.stop_gradient(draw)


class EmulatedRunner:
    """The full emulated read: map, program with ``fold_in(program_key, index)``, read
    bit-serially with ``fold_in(read_key, index)``. Not differentiable (ADC rounding).

    Args:
      config: one CrossbarConfig or a mapping name -> config (see :func:`layer_config`).
      program_key: key of the programming draw (device variation, faults); None when the
        configuration has none.
      read_key: key of the per-read noise (read noise, ADC noise); None when none.
      noise: traced NoiseParameters overriding the configuration's numbers.
      scales: fixed per-layer input quantization steps (name -> scalar); None: the
        configuration's dynamic scale.
      counts: if a dict, each layer's ReadCounts is stored in it under the layer's name.
    """

    def __init__(self, config, program_key: jax.Array | None = None,
                 read_key: jax.Array | None = None, noise: NoiseParameters | None = None,
                 scales: Mapping[str, jax.Array] | None = None, counts: dict | None = None):
        self.config, self.program_key, self.read_key = config, program_key, read_key
        self.noise, self.scales, self.counts = noise, scales, counts

    def __call__(self, index, name, x, w):
        config = _configs_for(self.config, name)
        pkey = None if self.program_key is None else jax.random.fold_in(self.program_key, index)
        rkey = None if self.read_key is None else jax.random.fold_in(self.read_key, index)
        programmed = program(encode_weights(w, config), pkey, self.noise)
        scale = None if self.scales is None else self.scales.get(name)
        outputs, counts = read(programmed, x, key=rkey, noise=self.noise, scale=scale)
        if self.counts is not None:
            self.counts[name] = counts
        return outputs.astype(x.dtype)


def scales_from_records(records: Mapping[str, jax.Array], config) -> dict[str, np.ndarray]:
    """Per-layer input steps ``observed max / top code`` from :class:`RecordingRunner` records."""
    out = {}
    for name, value in records.items():
        cfg = _configs_for(config, name)
        top = 2 ** cfg.inputs.bits - 1
        out[name] = np.float32(max(float(value), 1e-12) / top)
    return out
