"""Accuracy of any model read through the crossbars of an :class:`~reram_emu.nn.Analog`, over
noise keys, with confidence intervals.

Each key is split into a programming key and a read key (``jax.random.split``, as
:func:`reram_emu.training.evaluate_emulated` does, so the two give the same numbers); the model
is programmed once per key (layer ``i`` from ``fold_in(program_key, i)``) and every batch is
read with it (batch ``b``, layer ``i`` from ``fold_in(fold_in(read_key, b), i)``): program
once, read many. One compiled read serves every
batch and key (a shorter last batch is padded; its padding rows are read and not counted; a
row's noise does not depend on the other rows of its batch).
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import check_noise
from ..training import EmulatedEvaluation, mean_ci, noise_keys
from .train import check_labelled
from .transform import Analog, split_arrays

__all__ = ["evaluate_accuracy", "program_and_read_keys"]


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
                      batch_size: int = 1000, calibrate=None) -> EmulatedEvaluation:
    """Classification accuracy of ``f(params, x)`` (logits (N, classes)) over noise keys.

    Args:
      f: the model on crossbars (:func:`reram_emu.nn.analog`), any mode.
      x, y: inputs (N, ...) and integer labels (N,).
      keys: number of keys (split from ``seed``) or a (n,) array of typed keys; None: one.
      noise: traced :class:`~reram_emu.NoiseParameters` overriding the configured numbers.
      calibrate: None, or inputs to calibrate every programmed state on
        (:meth:`Analog.calibrate`) before reading (PRIME's calibrated ADC).

    Returns an :class:`~reram_emu.training.EmulatedEvaluation` (per-key accuracies, mean,
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

    strict = {info.name for info in f.layers(params, example) if info.config is not None
              and info.config.mapping.scheme == "polarized"
              and info.config.mapping.on_violation == "error"}
    arrays, skeleton = split_arrays(params)
    labels = np.asarray(y, np.int32)
    correct = np.zeros((keys.shape[0], n), bool)
    for k in range(keys.shape[0]):
        state = (_program(f, skeleton, arrays, example, keys[k], noise) if needs_state
                 else None)
        for name in sorted(strict if state is not None else ()):
            zeroed = int(state.weights_zeroed[name])
            if zeroed:
                raise ValueError(
                    f"layer {name!r}: {zeroed} quantized weights oppose their fragment's sign, "
                    f"so the FORMS mapping would zero them; polarize the model, or pass a "
                    f"config with MappingConfig(on_violation='project') to read the projected "
                    f"weights")
        if calibrate is not None and state is not None:
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
