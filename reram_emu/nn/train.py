"""Training any model, in float or hardware-aware on the crossbars: :func:`fit`.

One loop for every phase (plain, noise-aware fine-tuning, the polarizer's ADMM and masked
phases): Adam or any optax optimizer over the array leaves of the parameters (Equinox models
hold functions too), the forward either the float function or the :class:`~reram_emu.nn.Analog`
in its ``"noise_aware"`` mode (each step programs afresh from ``fold_in(key, step)`` and draws
read noise: device variation, faults, finite levels, IR drop and the read's output noise, with
straight-through gradients).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .transform import Analog, split_arrays

__all__ = ["fit", "cross_entropy", "check_training_data", "check_labelled"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits (B, classes) against integer labels (B,)."""
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))


def check_labelled(x, y) -> None:
    """``x`` (N, ...) finite and ``y`` (N,) integer class labels, N >= 1."""
    x_shape, y_shape = np.shape(x), np.shape(y)
    if len(y_shape) != 1 or not x_shape or x_shape[0] != y_shape[0] or x_shape[0] == 0:
        raise ValueError(f"need x (N, ...) and integer labels y (N,) with N >= 1, got shapes "
                         f"{x_shape} and {y_shape}" + ("; for one-hot labels pass y.argmax(-1)"
                                                       if len(y_shape) == 2 else ""))
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {np.asarray(y).dtype}")
    if not np.all(np.isfinite(np.asarray(x, np.float64))):
        raise ValueError("x contains NaN or infinite values")


def check_training_data(x, y, batch_size, steps_per_epoch=None) -> int:
    """Validate a classification training set; returns the steps per epoch."""
    check_labelled(x, y)
    x_shape = np.shape(x)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
            batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    steps = x_shape[0] // batch_size
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {x_shape[0]} examples")
    if steps_per_epoch is not None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        steps = min(steps, steps_per_epoch)
    return int(steps)


def fit(f: Analog, params, x, y, optimizer: optax.GradientTransformation | float,
        epochs: int, *, batch_size: int = 64, seed: int = 0, noise_aware: bool = False,
        steps_per_epoch: int | None = None, loss: Callable = cross_entropy,
        phase: str = "train", log: Callable[[str], None] | None = print) -> tuple[Any, list]:
    """Train the classifier ``f(params, x) -> logits`` for ``epochs`` epochs.

    Args:
      optimizer: an optax optimizer (updates get ``params``, so :func:`admm_pull` and
        :func:`polarized_masks` chain after it), or a learning rate for Adam.
      noise_aware: forward through ``f`` (made with ``mode="noise_aware"``), programmed
        afresh every step; otherwise the float function ``f.apply_fn``.
      seed: the data order (``default_rng([seed, epoch])``) and the step keys.

    Returns ``(params, history)``: one record per epoch (phase, epoch, mean train loss).
    """
    if not isinstance(f, Analog):
        raise TypeError(f"f must be the Analog of reram_emu.nn.analog(apply, config), got "
                        f"{type(f).__name__}")
    if noise_aware and f.mode != "noise_aware":
        raise ValueError(f"noise_aware=True needs f made with analog(..., mode='noise_aware'), "
                         f"got mode {f.mode!r}")
    if isinstance(optimizer, (int, float)) and not isinstance(optimizer, bool):
        optimizer = optax.adam(float(optimizer))
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation or a learning "
                        f"rate, got {type(optimizer).__name__}")
    steps = check_training_data(x, y, batch_size, steps_per_epoch)
    x, y = np.asarray(x), np.asarray(y, np.int32)
    log = log or (lambda message: None)
    arrays, skeleton = split_arrays(params)

    def logits_of(leaves, xb, key):
        model = skeleton.rebuild(leaves)
        if not noise_aware:
            return f.apply_fn(model, xb)
        program_key, read_key = jax.random.split(key)
        return f(model, xb, program_key=program_key, read_key=read_key)

    @jax.jit
    def step(leaves, opt_state, xb, yb, key):
        value, grads = jax.value_and_grad(lambda q: loss(logits_of(q, xb, key), yb))(leaves)
        updates, opt_state = optimizer.update(grads, opt_state, leaves)
        return optax.apply_updates(leaves, updates), opt_state, value

    leaves = list(arrays)
    opt_state = optimizer.init(leaves)
    base = jax.random.key(seed)
    history = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        losses = []
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            key = jax.random.fold_in(base, epoch * steps + i)
            leaves, opt_state, value = step(leaves, opt_state, x[idx], y[idx], key)
            losses.append(value)
        record = {"phase": phase, "epoch": epoch + 1,
                  "train_loss": float(np.mean(jax.device_get(losses)))}
        history.append(record)
        log(f"[{phase}] epoch {epoch + 1}/{epochs} loss={record['train_loss']:.4g}")
    return skeleton.rebuild(leaves), history
