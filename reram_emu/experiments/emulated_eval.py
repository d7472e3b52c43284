"""Helpers the ``adc_resolution`` and ``mappings`` experiments share: the 8-bit digital
reference a lossless crossbar must reproduce, one noise-free emulated read of a whole test set
with its hardware counts, and a data-calibrated fixed ADC range.

* :func:`reference_logits`: the *quantized ideal*: every layer computes
  ``quantize_inputs(x) @ quantize_weights(w)`` exactly (integers), rescaled by the input and
  weight steps, as a digital accelerator with the same 8-bit weights and inputs would. An
  emulated read whose ADC neither clips nor rounds (LSB one level, full scale above the
  worst-case sum) and that has no noise must give the same logits.
* :func:`clean_read`: logits and per-layer :class:`~reram_emu.crossbar.ReadCounts` of the
  emulated read without noise (one jitted function per model and layer configurations).
* :func:`calibrated_full_scales`: per layer, the ADC full scale (level units) that covers the
  99.99th percentile of the noise-free ADC inputs calibration images produce (PRIME's 6-bit
  ADC cannot cover its worst-case sum: its worst-case LSB would be 2**10 levels).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import training
from ..config import ADCConfig, CrossbarConfig
from ..converters import calibrated_lsb, code_range
from ..crossbar import adc_inputs, program
from ..layers import EmulatedRunner
from ..mapping import encode_weights
from ..models import Model
from ..quantization import quantize_inputs, quantize_weights

__all__ = ["ReferenceRunner", "reference_logits", "clean_read", "calibrated_full_scales",
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


class ReferenceRunner:
    """The quantized ideal product: exact integer ``x_int @ w_int`` rescaled, per layer.

    Args:
      precisions: layer name -> ``(WeightConfig, InputConfig)`` (the weight quantization and
        the input encoding of the layer's CrossbarConfig).
      scales: layer name -> fixed input step (the same the emulated read uses).
    """

    def __init__(self, precisions: Mapping[str, tuple], scales: Mapping[str, jax.Array]):
        self.precisions, self.scales = precisions, scales

    def __call__(self, index, name, x, w):
        weights, inputs = self.precisions[name]
        step = jnp.asarray(self.scales[name], jnp.float32)
        x_int = quantize_inputs(x, step, inputs).astype(jnp.float32)
        w_int, w_scale = quantize_weights(w.astype(jnp.float32), weights)
        # integer sums < 2**24 here (8-bit x 8-bit x K <= 2**24 for K < 258): exact in float32
        return ((x_int @ w_int) * step * w_scale).astype(x.dtype)


def per_layer_configs(model: Model, config: CrossbarConfig | Mapping[str, CrossbarConfig]
                      ) -> dict[str, CrossbarConfig]:
    """Per-layer configurations (columns trimmed per layer) from one config or a mapping."""
    if isinstance(config, CrossbarConfig):
        return training.layer_configs(model, config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a CrossbarConfig or a mapping name -> config, got "
                        f"{type(config).__name__}")
    return dict(config)


@functools.lru_cache(maxsize=8)
def _reference_apply(model: Model, precisions: tuple):
    precisions = dict(precisions)
    return jax.jit(lambda params, x, scales: model.apply(params, x,
                                                         ReferenceRunner(precisions, scales)))


def reference_logits(model: Model, params: dict, x, config, scales: Mapping) -> np.ndarray:
    """Logits of the quantized ideal (:class:`ReferenceRunner`) for images ``x``: what every
    design's lossless, noise-free read gives. It depends only on each layer's weight
    quantization and input encoding (bits, sign; not the DAC), so designs sharing those share
    one compiled function."""
    configs = per_layer_configs(model, config)
    precisions = tuple(sorted(
        (name, (cfg.weights, dataclasses.replace(cfg.inputs, dac_bits=1)))
        for name, cfg in configs.items()))
    fn = _reference_apply(model, precisions)
    return np.asarray(fn(params, jnp.asarray(x), {k: jnp.asarray(v) for k, v in scales.items()}))


@functools.lru_cache(maxsize=16)
def _clean_read_fn(model: Model, configs: tuple):
    configs = dict(configs)

    def run(params, x, scales):
        counts: dict = {}
        logits = model.apply(params, x, EmulatedRunner(configs, scales=scales, counts=counts))
        return logits, counts

    return jax.jit(run)


def clean_read(model: Model, params: dict, x, config, scales: Mapping
               ) -> tuple[np.ndarray, dict]:
    """Noise-free emulated read of images ``x``: ``(logits, {layer: ReadCounts})``.

    The configurations must hold no device, read or ADC noise (nothing random is drawn).
    """
    configs = per_layer_configs(model, config)
    for name, cfg in configs.items():
        d = cfg.device
        if (d.variation_sigma or d.read_noise_sigma or d.stuck_on_rate or d.stuck_off_rate
                or cfg.adc.noise_lsb):
            raise ValueError(f"clean_read needs noise-free configurations; layer {name!r} has "
                             f"device or ADC noise")
    fn = _clean_read_fn(model, tuple(sorted(configs.items())))
    logits, counts = fn(params, jnp.asarray(x), {k: jnp.asarray(v) for k, v in scales.items()})
    return np.asarray(logits), jax.device_get(counts)


class _LayerInputs:
    """Ideal forward that keeps each layer's input batch (for ADC calibration)."""

    def __init__(self):
        self.inputs: dict[str, jax.Array] = {}

    def __call__(self, index, name, x, w):
        self.inputs[name] = x
        return x @ w


@functools.lru_cache(maxsize=8)
def _full_scale_fn(model: Model, configs: tuple, percentile: float):
    configs = dict(configs)

    def run(params, x, scales):
        recorder = _LayerInputs()
        model.apply(params, x, recorder)
        out = {}
        for name, cfg in configs.items():
            layer = program(encode_weights(params[name]["w"], cfg))
            x_int = quantize_inputs(recorder.inputs[name], scales[name], cfg.inputs)
            out[name] = calibrated_lsb(adc_inputs(layer, x_int), cfg, percentile) \
                * code_range(cfg)[1]
        return out

    return jax.jit(run)


def calibrated_full_scales(model: Model, params: dict, x_calibration, config,
                           scales: Mapping, percentile: float = 99.99) -> dict[str, float]:
    """Per layer, the ADC full scale (level units) covering ``percentile`` % of the noise-free
    ADC inputs of ``x_calibration`` (ideal forward to each layer's inputs, quantized with the
    fixed ``scales``, read through the nominally programmed layer): ``top_code * lsb`` with
    :func:`reram_emu.converters.calibrated_lsb`. Use with ``ADCConfig(range="fixed",
    full_scale_levels=...)`` (:func:`with_adc`). One jitted function per model and configs."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    configs = per_layer_configs(model, config)
    fn = _full_scale_fn(model, tuple(sorted(configs.items())), float(percentile))
    out = fn(params, jnp.asarray(x_calibration, jnp.float32),
             {k: jnp.asarray(v, jnp.float32) for k, v in scales.items()})
    return {name: float(value) for name, value in out.items()}


def with_adc(configs: Mapping[str, CrossbarConfig], bits: int,
             full_scales: Mapping[str, float]) -> dict[str, CrossbarConfig]:
    """Per-layer configs with a ``bits``-bit ADC of fixed range ``full_scales[layer]``."""
    return {name: cfg.replace(adc=ADCConfig(bits=bits, range="fixed",
                                            full_scale_levels=float(full_scales[name])))
            for name, cfg in configs.items()}
