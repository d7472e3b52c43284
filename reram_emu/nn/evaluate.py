"""Accuracy of any model read through the crossbars of an :class:`~reram_emu.nn.Analog`, over
noise keys, with confidence intervals.

Each key is split into a programming key and a read key (``jax.random.split``, as every
evaluation of the package does); the model is programmed once per key (layer ``i`` from
``fold_in(program_key, i)``) and every batch is read with it (batch ``b``, layer ``i`` from
``fold_in(fold_in(read_key, b), i)``): program once, read many. One compiled read serves every
batch and key (a shorter last batch is padded; its padding rows are read and not counted; a
row's noise does not depend on the other rows of its batch).
"""

from __future__ import annotations

import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import check_noise
from ..stats import mean_ci
from .train import check_labelled
from .transform import Analog, AnalogState, split_arrays

__all__ = ["evaluate_accuracy", "program_and_read_keys", "EmulatedEvaluation", "noise_keys"]


class EmulatedEvaluation(NamedTuple):
    """Accuracy read through the emulator: per key, mean, std and the 95 % t interval over
    keys (fractions in [0, 1]); ``images`` evaluated and ``seconds`` of wall time;
    ``correct`` (keys, images) bool: which image each key classified correctly (for intervals
    that also cover the choice of images, :func:`crossed_ci`)."""

    accuracies: np.ndarray
    mean: float
    std: float
    ci_low: float
    ci_high: float
    images: int
    seconds: float
    correct: np.ndarray | None = None


def noise_keys(keys, seed: int = 0) -> jax.Array:
    """The (n,) typed noise keys of an evaluation: ``keys`` as a number of keys (split from
    ``seed``), an (n,) array of typed keys, or None (one key)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if keys is None:
        keys = 1
    if isinstance(keys, (int, np.integer)) and not isinstance(keys, bool):
        if keys < 1:
            raise ValueError(f"keys must be a number of keys >= 1 or a (n,) array of "
                             f"jax.random keys, got {keys}")
        return jax.random.split(jax.random.key(int(seed)), int(keys))
    if not (hasattr(keys, "dtype") and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
            and keys.ndim == 1 and keys.shape[0] >= 1):
        raise ValueError(f"keys must be a number of keys >= 1 or a (n,) array of typed "
                         f"jax.random keys (jax.random.split(jax.random.key(0), n)), got "
                         f"{type(keys).__name__} {getattr(keys, 'shape', '')}")
    return keys


def program_and_read_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The programming key and the read key that :func:`evaluate_accuracy` derives from one."""
    program_key, read_key = jax.random.split(key)
    return program_key, read_key


@partial(jax.jit, static_argnums=(0, 1))
def _program(f: Analog, skeleton, arrays, example, key, noise):
    program_key, _ = program_and_read_keys(key)
    return f.program(skeleton.rebuild(arrays), example, key=program_key, noise=noise)


@partial(jax.jit, static_argnums=(0, 1))
def _batch_correct(f: Analog, skeleton, state, arrays, key, index, xb, yb, noise):
    params = skeleton.rebuild(arrays)
    _, read_key = program_and_read_keys(key)
    logits = f.apply(state, params, xb, read_key=jax.random.fold_in(read_key, index),
                     noise=noise)
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits (batch, classes), got shape "
                         f"{logits.shape}")
    return jnp.argmax(logits, -1) == yb


def evaluate_accuracy(f: Analog, params, x, y, *, keys=None, seed: int = 0, noise=None,
                      batch_size: int = 1000, calibrate=None, scales=None
                      ) -> EmulatedEvaluation:
    """Classification accuracy of ``f(params, x)`` (logits (N, classes)) over noise keys.

    Args:
      f: the model on crossbars (:func:`reram_emu.nn.analog`), any mode.
      x, y: inputs (N, ...) and integer labels (N,).
      keys: number of keys (split from ``seed``) or a (n,) array of typed keys; None: one.
      noise: traced :class:`~reram_emu.NoiseParameters` overriding the configured numbers.
      calibrate: None, or inputs to calibrate every programmed state on
        (:meth:`Analog.calibrate`) before reading (PRIME's calibrated ADC).
      scales: None (each layer's configured input scale), or fixed input steps
        ``{layer name: step}`` (input units per code) for the layers named.

    Returns an :class:`EmulatedEvaluation` (per-key accuracies, mean,
    std, 95 % t interval over keys, seconds, and the (keys, N) correctness table).
    """
    t0 = time.perf_counter()
    if not isinstance(f, Analog):
        raise TypeError(f"f must be the Analog of reram_emu.nn.analog(apply, config), got "
                        f"{type(f).__name__}")
    keys = noise_keys(keys, seed)
    check_noise(noise)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
            batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_labelled(x, y)
    x_shape = np.shape(x)
    n = x_shape[0]
    batch_size = int(min(batch_size, n))
    example = jnp.asarray(np.asarray(x[:batch_size]))
    needs_state = f.mode in ("emulated", "noise_aware")
    infos = f.layers(params, example)
    arrays, skeleton = split_arrays(params)
    shape = jax.eval_shape(lambda a, xb: f.apply_fn(skeleton.rebuild(a), xb), arrays,
                           example).shape
    if len(shape) != 2:
        raise ValueError(f"the model must return logits (batch, classes), got shape {shape}")
    labels_np = np.asarray(y)
    if labels_np.min() < 0 or labels_np.max() >= shape[1]:
        raise ValueError(f"labels must lie in [0, {shape[1] - 1}] (the model has {shape[1]} "
                         f"outputs), got [{labels_np.min()}, {labels_np.max()}]")
    fixed = {}
    if scales is not None:
        names = {info.name for info in infos if info.config is not None}
        unknown = sorted(set(scales) - names) if isinstance(scales, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"scales must be a dict {{layer name: input step}} over the "
                             f"crossbar layers {sorted(names)}, got "
                             f"{unknown if unknown else type(scales).__name__}")
        for name, value in scales.items():
            value = np.asarray(value, np.float64)
            if value.shape != () or not np.isfinite(value) or value <= 0:
                raise ValueError(f"scales[{name!r}] must be a finite number > 0, got {value}")
            fixed[name] = jnp.asarray(value, jnp.float32)

    strict = {info.name for info in infos if info.config is not None
              and info.config.mapping.scheme == "polarized"
              and info.config.mapping.on_violation == "error"}
    labels = np.asarray(y, np.int32)
    correct = np.zeros((keys.shape[0], n), bool)
    for k in range(keys.shape[0]):
        state = (_program(f, skeleton, arrays, example, keys[k], noise) if needs_state
                 else None)
        if fixed:
            state = (AnalogState({}, {}, dict(fixed)) if state is None else
                     state._replace(scales={**state.scales, **fixed}))
        for name in sorted(strict if needs_state else ()):
            zeroed = int(state.weights_zeroed[name])
            if zeroed:
                raise ValueError(
                    f"layer {name!r}: {zeroed} quantized weights oppose their fragment's sign, "
                    f"so the FORMS mapping would zero them; polarize the model, or pass a "
                    f"config with MappingConfig(on_violation='project') to read the projected "
                    f"weights")
        if calibrate is not None and needs_state:
            state = f.calibrate(state, params, jnp.asarray(calibrate), noise=noise,
                                read_key=program_and_read_keys(keys[k])[1])
        for b, i in enumerate(range(0, n, batch_size)):
            xb, yb = np.asarray(x[i:i + batch_size]), labels[i:i + batch_size]
            valid = len(xb)
            if valid < batch_size:
                xb = np.concatenate([xb, np.zeros((batch_size - valid,) + xb.shape[1:],
                                                  xb.dtype)])
                yb = np.concatenate([yb, np.full(batch_size - valid, -1, np.int32)])
            hits = _batch_correct(f, skeleton, state, arrays, keys[k], b, jnp.asarray(xb),
                                  jnp.asarray(yb), noise)
            correct[k, i:i + valid] = np.asarray(hits)[:valid]
    accuracies = correct.mean(axis=1)
    mean, low, high = mean_ci(accuracies)
    std = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0
    return EmulatedEvaluation(accuracies, mean, std, low, high, n, time.perf_counter() - t0,
                              correct)
