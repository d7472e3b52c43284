"""Helpers the ``adc_resolution`` and ``mappings`` experiments share: the 8-bit digital
reference a lossless crossbar must reproduce, one noise-free emulated read of a whole test set
with its hardware counts, and a data-calibrated fixed ADC range.

* :func:`reference_logits`: the *quantized ideal* (the ``"digital"`` mode of the crossbar op):
  every layer computes ``quantize_inputs(x) @ integer weights`` exactly, rescaled by the input
  and weight steps, as a digital accelerator with the same 8-bit weights and inputs would. An
  emulated read whose ADC neither clips nor rounds (LSB one level, full scale above the
  worst-case sum) and that has no noise must give the same logits.
* :func:`clean_read`: logits and per-layer :class:`~reram_emu.crossbar.ReadCounts` of the
  emulated read without noise.
* :func:`calibrated_full_scales`: per layer, the ADC full scale (level units) that covers the
  99.99th percentile of the noise-free ADC inputs calibration images produce (PRIME's 6-bit
  ADC cannot cover its worst-case sum: its worst-case LSB would be 2**10 levels).

Every model here is a function ``apply(params, x)`` put on crossbars with
:func:`reram_emu.nn.analog` (:func:`on_crossbars`); layers are named by parameter path.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ADCConfig, CrossbarConfig
from ..converters import calibrated_lsb, code_range
from ..crossbar import adc_inputs
from ..nn import Analog, AnalogState, analog
from ..quantization import quantize_inputs

__all__ = ["on_crossbars", "reference_logits", "clean_read", "calibrated_full_scales",
           "with_adc", "per_layer_configs", "check_images"]


def check_images(x, y, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a test set: ``x`` (n, features) finite floats, ``y`` (n,) integer labels."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != features:
        raise ValueError(f"images must have shape (n, {features}), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
    if x.shape[0] < 1:
        raise ValueError("the test set is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or infinite values")
    return x.astype(np.float32), y


def _layers_key(config):
    if isinstance(config, CrossbarConfig):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a CrossbarConfig or a mapping layer name -> config, "
                        f"got {type(config).__name__}")
    return tuple(sorted(config.items()))


@functools.lru_cache(maxsize=32)
def _cached_analog(apply: Callable, layers_key, mode: str) -> Analog:
    if isinstance(layers_key, CrossbarConfig):
        return analog(apply, layers_key, mode=mode, nonnegative_inputs=True)
    return analog(apply, None, mode=mode, layers=dict(layers_key), nonnegative_inputs=True)


def on_crossbars(apply: Callable, config, mode: str = "emulated") -> Analog:
    """The classifier ``apply(params, x)`` (non-negative inputs) on crossbars: one config for
    every layer or a mapping layer name -> config (:func:`per_layer_configs`); one
    :class:`~reram_emu.nn.Analog` per model, configuration and mode (cached), so repeated
    reads reuse its compilation."""
    return _cached_analog(apply, _layers_key(config), mode)


def per_layer_configs(apply: Callable, params, x, config) -> dict[str, CrossbarConfig]:
    """``{layer name: CrossbarConfig}`` of every crossbar layer (columns trimmed per layer)
    from one config or a mapping, traced on example inputs ``x``."""
    return {info.name: info.config
            for info in on_crossbars(apply, config, "float").layers(params, jnp.asarray(x))}


def _fixed(scales: Mapping) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in scales.items()}


@functools.partial(jax.jit, static_argnums=0)
def _digital(f: Analog, params, x, scales):
    return f.apply(AnalogState({}, {}, scales), params, x)


def reference_logits(apply: Callable, params, x, config, scales: Mapping) -> np.ndarray:
    """Logits of the quantized ideal for images ``x`` (the ``"digital"`` mode of
    :func:`reram_emu.nn.crossbar_matmul`: every layer computes ``quantize_inputs(x) @
    integer weights`` exactly, rescaled by the input and weight steps): what every design's
    lossless, noise-free read gives. ``scales``: the fixed input step of every layer."""
    f = on_crossbars(apply, config, "digital")
    return np.asarray(_digital(f, params, jnp.asarray(x), _fixed(scales)))


@functools.partial(jax.jit, static_argnums=0)
def _clean(f: Analog, params, x, scales):
    state = f.program(params, x)._replace(scales=scales)
    return f.apply(state, params, x, return_counts=True)


def clean_read(apply: Callable, params, x, config, scales: Mapping
               ) -> tuple[np.ndarray, dict]:
    """Noise-free emulated read of images ``x``: ``(logits, {layer: ReadCounts})``.

    The configurations must hold no device, read or ADC noise (nothing random is drawn).
    """
    configs = config.items() if isinstance(config, Mapping) else [("every layer", config)]
    for name, cfg in configs:
        d = cfg.device
        if (d.variation_sigma or d.read_noise_sigma or d.stuck_on_rate or d.stuck_off_rate
                or cfg.adc.noise_lsb):
            raise ValueError(f"clean_read needs noise-free configurations; layer {name!r} has "
                             f"device or ADC noise")
    f = on_crossbars(apply, config, "emulated")
    logits, counts = _clean(f, params, jnp.asarray(x), _fixed(scales))
    return np.asarray(logits), jax.device_get(counts)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _full_scales(f: Analog, percentile: float, params, x, scales):
    inputs = f.layer_inputs(params, x)
    state = f.program(params, x)
    out = {}
    for info in f.layers(params, x):
        if info.config is None:
            continue
        cfg = info.config
        x_int = quantize_inputs(inputs[info.name], scales[info.name], cfg.inputs)
        out[info.name] = calibrated_lsb(adc_inputs(state.layers[info.name], x_int), cfg,
                                        percentile) * code_range(cfg)[1]
    return out


def calibrated_full_scales(apply: Callable, params, x_calibration, config,
                           scales: Mapping, percentile: float = 99.99) -> dict[str, float]:
    """Per layer, the ADC full scale (level units) covering ``percentile`` % of the noise-free
    ADC inputs of ``x_calibration`` (float forward to each layer's inputs, quantized with the
    fixed ``scales``, read through the nominally programmed layer): ``top_code * lsb`` with
    :func:`reram_emu.converters.calibrated_lsb`. Use with ``ADCConfig(range="fixed",
    full_scale_levels=...)`` (:func:`with_adc`)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    f = on_crossbars(apply, config, "emulated")
    out = _full_scales(f, float(percentile), params, jnp.asarray(x_calibration, jnp.float32),
                       _fixed(scales))
    return {name: float(value) for name, value in out.items()}


def with_adc(configs: Mapping[str, CrossbarConfig], bits: int,
             full_scales: Mapping[str, float]) -> dict[str, CrossbarConfig]:
    """Per-layer configs with a ``bits``-bit ADC of fixed range ``full_scales[layer]``."""
    return {name: cfg.replace(adc=ADCConfig(bits=bits, range="fixed",
                                            full_scale_levels=float(full_scales[name])))
            for name, cfg in configs.items()}
