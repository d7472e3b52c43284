"""The one crossbar op: a weight-stationary product ``x @ w`` on emulated crossbars.

Everything above it (the :func:`reram_emu.nn.analog` transform, training, evaluation) calls
:func:`crossbar_matmul` for a product of an input batch ``x`` (R, K) with a weight matrix
``w`` (K, N) in the package's (in_features, out_features) convention. Modes:

* ``"float"``: ``x @ w``, the float model;
* ``"digital"``: the ideal quantized product, ``quantize(x) @ integer_weights`` rescaled, with
  the mapping's integer weights (8-bit quantization and, for FORMS, the fragment-sign
  projection): what the emulator gives with every non-ideality off and an ADC that never
  clips (exact while the integer sums stay below 2**24 in float32);
* ``"emulated"``: the exact bit-level read (:func:`reram_emu.read`: bit-serial inputs,
  per-fragment ADCs, read and ADC noise, zero-skipping) of the programmed layer;
* ``"noise_aware"``: the fast forward of noise-aware training: ``x @ w_realized`` with the
  programmed layer's effective weights (:func:`reram_emu.effective_weights`: quantization,
  polarization, variation, faults, finite levels, IR drop) plus Gaussian output noise with
  the read noise's and ADC noise's moments (:func:`reram_emu.nn.moments.output_noise_moments`).

Every mode but ``"float"`` has the gradient of ``x @ w`` through a straight-through
estimator, so ``jax.grad`` reaches ``w`` and ``x``. Keys are explicit: programming
(:func:`program_weights`, device variation and faults) is drawn once from its own key; each
read draws its read and ADC noise from the read key. ``noise`` (traced
:class:`~reram_emu.NoiseParameters`) overrides the configured numbers, so a sweep vmaps over it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..config import CrossbarConfig, NoiseParameters
from ..crossbar import ProgrammedLayer, ReadCounts, effective_weights, program, read
from ..mapping import encode_weights
from ..quantization import input_scale, quantize_inputs
from .moments import output_noise_moments

__all__ = ["MODES", "CrossbarProduct", "program_weights", "crossbar_matmul", "layer_config"]

MODES = ("float", "digital", "emulated", "noise_aware")
"""The modes of :func:`crossbar_matmul` (module docstring)."""


class CrossbarProduct(NamedTuple):
    """What one crossbar product returns: outputs (R, N) and, for ``"emulated"``, the counts."""

    outputs: jax.Array
    counts: ReadCounts | None


def ste(x: jax.Array, x_forward: jax.Array) -> jax.Array:
    """Straight-through estimator: exactly the value of ``x_forward``, the gradient of ``x``.

    ``x_forward + (x - stop_gradient(x))``: the added term is exactly 0 for finite ``x``, so
    the value is ``x_forward`` bit for bit (``x + stop_gradient(x_forward - x)`` rounds).
    """
    return x_forward + (x - jax.lax.stop_gradient(x))


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


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def program_weights(w: jax.Array, config: CrossbarConfig, key: jax.Array | None = None,
                    noise: NoiseParameters | None = None) -> tuple[ProgrammedLayer, jax.Array]:
    """Map (jit-friendly: :func:`reram_emu.encode_weights`) and program a (K, N) weight matrix.

    ``key`` draws the programming (variation, stuck-at faults); the weights' gradient is
    stopped (programming is a measurement, not a function to differentiate). Returns the
    programmed layer and the number of quantized weights the polarized mapping zeroed because
    they oppose their fragment's sign (int32 scalar; 0 for polarized weights and for the
    other schemes): the flag to check under ``jit``.
    """
    mapped = encode_weights(jax.lax.stop_gradient(w), config)
    return program(mapped, key, noise), mapped.weights_zeroed


def _digital(x, w, config: CrossbarConfig, scale):
    mapped = encode_weights(jax.lax.stop_gradient(w), config)
    dtype = config.float_dtype
    xs = jax.lax.stop_gradient(x).astype(dtype)
    step = input_scale(xs, config.inputs) if scale is None else jnp.asarray(scale, dtype)
    x_int = quantize_inputs(xs, step, config.inputs).astype(dtype)
    y = (x_int @ mapped.integer_weights) * step * mapped.weight_scale
    finite = jnp.all(jnp.isfinite(xs), axis=-1, keepdims=True)
    return jnp.where(finite, y, jnp.nan)


def crossbar_matmul(x: jax.Array, w: jax.Array, config: CrossbarConfig | None, *,
                    mode: str = "emulated", programmed: ProgrammedLayer | None = None,
                    program_key: jax.Array | None = None, read_key: jax.Array | None = None,
                    noise: NoiseParameters | None = None, scale: jax.Array | None = None
                    ) -> CrossbarProduct:
    """``x`` (R, K) times ``w`` (K, N) on the crossbars of ``config`` in ``mode``.

    Args:
      x: input batch (R, K); unsigned configurations need ``x >= 0`` (checked by the read).
      w: the weight matrix (K, N); it carries the gradient (straight-through) in every mode.
      config: the layer's configuration (None only for ``"float"``).
      mode: one of :data:`MODES`.
      programmed: the layer programmed once (:func:`program_weights`); None programs ``w``
        here with ``program_key`` (noise-aware training draws fresh programming per step).
      read_key: key of this read's read and ADC noise.
      noise: traced numbers overriding the configuration's.
      scale: fixed input quantization step (shape () or (R, 1)); None: the dynamic scale.
    """
    mode = check_mode(mode)
    y_float = x @ w
    if mode == "float":
        return CrossbarProduct(y_float, None)
    if mode == "digital":
        return CrossbarProduct(ste(y_float, _digital(x, w, config, scale).astype(y_float.dtype)),
                               None)
    layer = programmed if programmed is not None else program_weights(w, config, program_key,
                                                                       noise)[0]
    w_forward = ste(w, effective_weights(layer).astype(w.dtype))
    y = x @ w_forward
    if mode == "emulated":
        outputs, counts = read(layer, jax.lax.stop_gradient(x), key=read_key, noise=noise,
                               scale=scale)
        return CrossbarProduct(ste(y, outputs.astype(y.dtype)), counts)
    # noise_aware
    if noise is not None:
        read_sigma, adc_lsb = noise.read_noise_sigma, noise.adc_noise_lsb
    else:
        read_sigma = config.device.read_noise_sigma or None
        adc_lsb = config.adc.noise_lsb or None
    if read_sigma is None and adc_lsb is None:
        return CrossbarProduct(y, None)
    if read_key is None:
        raise ValueError("the noise-aware product draws read noise and ADC noise: pass a "
                         "read_key (jax.random.key(seed))")
    xs = jax.lax.stop_gradient(x)
    step = input_scale(xs, config.inputs) if scale is None else jnp.asarray(scale, xs.dtype)
    mapped = encode_weights(jax.lax.stop_gradient(w), config)
    mean, std = output_noise_moments(layer, mapped, xs, step, read_sigma, adc_lsb)
    draw = mean + std * jax.random.normal(read_key, y.shape, y.dtype)
    return CrossbarProduct(y + jax.lax.stop_gradient(draw), None)
