"""CIFAR-10 networks as ordinary Flax linen models, batch norm folded for the crossbar read.

* :class:`ResNet` with :func:`resnet20` (He et al., "Deep Residual Learning", CVPR 2016,
  Sec. 4.2: a 3x3 stem of 16, three stages of 3 basic blocks of 16 / 32 / 64 channels, global
  average pooling, dense 10; the stage-changing shortcuts are 1x1 convolutions with batch norm,
  the paper's option B) and :func:`resnet18` (the usual CIFAR variant: a 3x3 stem of 64, no
  max pooling, four stages of 2 blocks of 64 / 128 / 256 / 512 channels).
* :class:`VGG` with ``"vgg11"`` / ``"vgg16"`` (Simonyan and Zisserman, 2015; 3x3 convolutions
  with batch norm and ReLU, 2x2 max pooling, one dense classifier, as CIFAR ports do).

Inputs are NHWC images in [0, 1]. Every convolution sits in a :class:`ConvBN`: with
``batch_norm=True`` a bias-free convolution then ``nn.BatchNorm``; with ``batch_norm=False``
(the *folded* form) a convolution with a bias. A crossbar holds the folded weights:
:func:`fold_batch_norm` turns a trained model's ``{"params", "batch_stats"}`` into the folded
model's params, ``W' = W * gamma / sqrt(var + eps)`` per output channel and ``b' = beta -
mean * gamma / sqrt(var + eps)``, equal in inference. The folded model is a plain
``apply(params, x)`` (:func:`folded_apply`) for :func:`reram_emu.nn.analog` and the package's
training (pruning, polarization, fine-tuning run on the folded weights). Every crossbar layer's
input is non-negative (images, ReLU outputs, their average), so ``nonnegative_inputs=True``.

:func:`train_batch_norm` trains the batch-norm model in float (SGD with momentum, cosine decay,
weight decay, optional augmentation such as :func:`reram_emu.cifar10.augment`), checkpointed
every epoch and resumable.

Needs Flax (``pip install reram_emu[flax]``); nothing in the core package imports this module.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import training as T

__all__ = ["BN_EPSILON", "ConvBN", "ResNet", "VGG", "resnet20", "resnet18", "cifar_model",
           "CIFAR_MODELS", "fold_batch_norm", "folded_apply", "train_batch_norm"]

#: The batch norms' epsilon (used by the model and by the folding).
BN_EPSILON = 1e-5
VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


class ConvBN(nn.Module):
    """A convolution, then batch norm (``batch_norm=True``) or with a bias (folded)."""

    features: int
    kernel: int = 3
    strides: int = 1
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides),
                    padding="SAME", use_bias=not self.batch_norm, name="conv")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                             name="bn")(x)
        return x


class BasicBlock(nn.Module):
    features: int
    strides: int = 1
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(ConvBN(self.features, 3, self.strides, self.batch_norm, name="conv1")(
            x, train))
        y = ConvBN(self.features, 3, 1, self.batch_norm, name="conv2")(y, train)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = ConvBN(self.features, 1, self.strides, self.batch_norm, name="shortcut")(
                x, train)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A CIFAR ResNet of basic blocks: ``stages`` blocks per stage of ``widths`` channels."""

    stages: Sequence[int]
    widths: Sequence[int]
    num_classes: int = 10
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(ConvBN(self.widths[0], 3, 1, self.batch_norm, name="stem")(x, train))
        for s, (blocks, width) in enumerate(zip(self.stages, self.widths)):
            for b in range(blocks):
                x = BasicBlock(width, 2 if (s > 0 and b == 0) else 1, self.batch_norm,
                               name=f"stage{s + 1}_block{b + 1}")(x, train)
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class VGG(nn.Module):
    """VGG: ``cfg`` a name of :data:`VGG_CONFIGS` (channels, "M" = 2x2 max pooling)."""

    cfg: str = "vgg11"
    num_classes: int = 10
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        i = 0
        for item in VGG_CONFIGS[self.cfg]:
            if item == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                i += 1
                x = nn.relu(ConvBN(item, 3, 1, self.batch_norm, name=f"conv{i}")(x, train))
        return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))


def resnet20(num_classes: int = 10, batch_norm: bool = True) -> ResNet:
    return ResNet((3, 3, 3), (16, 32, 64), num_classes, batch_norm)


def resnet18(num_classes: int = 10, batch_norm: bool = True) -> ResNet:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, batch_norm)


CIFAR_MODELS = {"resnet20": resnet20, "resnet18": resnet18,
                "vgg11": partial(VGG, "vgg11"), "vgg16": partial(VGG, "vgg16")}


def cifar_model(name: str, num_classes: int = 10, batch_norm: bool = True) -> nn.Module:
    """One of :data:`CIFAR_MODELS` by name."""
    if name not in CIFAR_MODELS:
        raise ValueError(f"unknown CIFAR model {name!r}; known: {', '.join(CIFAR_MODELS)}")
    return CIFAR_MODELS[name](num_classes=num_classes, batch_norm=batch_norm)


# --------------------------------------------------------------------------- folding


def _fold(params: dict, stats: dict) -> dict:
    out = {}
    for key, value in params.items():
        if key == "bn" or not isinstance(value, dict):
            continue
        if "conv" in value and "bn" in value:  # a ConvBN with batch norm
            bn, st = value["bn"], stats[key]["bn"]
            gain = bn["scale"] / jnp.sqrt(st["var"] + BN_EPSILON)
            bias = bn["bias"] - st["mean"] * gain + value["conv"].get("bias", 0.0) * gain
            out[key] = {"conv": {"kernel": value["conv"]["kernel"] * gain, "bias": bias}}
        else:
            out[key] = _fold(value, stats.get(key, {}))
    for key, value in params.items():
        if not isinstance(value, dict):
            out[key] = value
    return out


def fold_batch_norm(model: nn.Module, variables: dict) -> tuple[nn.Module, dict]:
    """``(folded model, folded params)``: ``folded.apply({"params": p}, x)`` equals
    ``model.apply(variables, x, train=False)`` (see the module docstring).

    Raises:
      ValueError: ``model`` is already folded, or ``variables`` lack ``params`` /
        ``batch_stats``.
    """
    if not getattr(model, "batch_norm", False):
        raise ValueError("the model has no batch norm to fold (batch_norm=False)")
    if not isinstance(variables, dict) or not {"params", "batch_stats"} <= set(variables):
        raise ValueError("variables must be the model's {'params': ..., 'batch_stats': ...}")
    folded = model.clone(batch_norm=False)
    return folded, _fold(dict(variables["params"]), dict(variables["batch_stats"]))


def folded_apply(model: nn.Module) -> Callable:
    """The folded model as ``apply(params, x) -> logits`` (inference)."""
    if getattr(model, "batch_norm", True):
        raise ValueError("folded_apply needs the folded model (fold_batch_norm)")
    return _FoldedApply(model)


class _FoldedApply:
    """Hashable ``apply(params, x)`` of a folded model (a jit static argument, provenance)."""

    def __init__(self, model):
        self.model = model
        self.__qualname__ = f"folded_apply({type(model).__name__})"

    def __call__(self, params, x):
        return self.model.apply({"params": params}, x)

    def __hash__(self):
        return hash(("folded", self.model))

    def __eq__(self, other):
        return isinstance(other, _FoldedApply) and other.model == self.model

    def __repr__(self):
        return f"folded_apply({self.model!r})"


# --------------------------------------------------------------------------- training


def _check(x, y, epochs, batch_size, num_classes):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x_train must be (n, H, W, C) images, got shape {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_train must be ({len(x)},) integer labels, got {y.shape} {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {y.min()}..{y.max()}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be an int in [1, {len(x)}], got {batch_size!r}")
    return x, y.astype(np.int32)


def train_batch_norm(model: nn.Module, variables: dict, x_train, y_train, *, epochs: int,
                     batch_size: int = 128, learning_rate: float = 0.1, momentum: float = 0.9,
                     weight_decay: float = 5e-4, seed: int = 0,
                     augment_fn: Callable | None = None, checkpoint: str | None = None,
                     eval_data=None, steps_per_epoch: int | None = None,
                     log: Callable[[str], None] | None = print) -> tuple[dict, list]:
    """Train a batch-norm model in float; returns ``(variables, history)``.

    SGD with (heavy-ball) momentum and a cosine learning-rate decay over all steps, weight
    decay on every parameter (added to the gradient), cross-entropy. Epoch ``e`` visits
    ``default_rng([seed, e]).permutation(n)``; step ``s`` draws ``fold_in(key(seed), s)`` for
    ``augment_fn(key, images)``. With ``checkpoint`` (a .npz path) every epoch is saved and a
    rerun resumes at the last finished one (bit-identical to an uninterrupted run).
    ``eval_data``: ``(x_test, y_test)`` for a per-epoch test accuracy.
    """
    num_classes = getattr(model, "num_classes", None)
    x, y = _check(x_train, y_train, epochs, batch_size, num_classes or 10)
    steps = len(x) // batch_size if steps_per_epoch is None else steps_per_epoch
    if isinstance(steps, bool) or not isinstance(steps, int) \
            or not 1 <= steps <= len(x) // batch_size:
        raise ValueError(f"steps_per_epoch must be an int in [1, {len(x) // batch_size}] "
                         f"(whole batches of distinct images), got {steps!r}")
    log = log or (lambda line: None)
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps * epochs, 1))
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay),
                            optax.sgd(schedule, momentum=momentum))
    state = {"variables": variables, "opt_state": optimizer.init(variables["params"])}

    def loss_fn(params, stats, xb, yb):
        logits, new = model.apply({"params": params, "batch_stats": stats}, xb, train=True,
                                  mutable=["batch_stats"])
        loss = T.cross_entropy(logits, yb)
        return loss, (new["batch_stats"], jnp.mean(jnp.argmax(logits, -1) == yb))

    @jax.jit
    def step(state, xb, yb, key):
        if augment_fn is not None:
            xb = augment_fn(key, xb)
        v = state["variables"]
        (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            v["params"], v["batch_stats"], xb, yb)
        updates, opt_state = optimizer.update(grads, state["opt_state"], v["params"])
        params = optax.apply_updates(v["params"], updates)
        return {"variables": {"params": params, "batch_stats": stats},
                "opt_state": opt_state}, loss, acc

    @jax.jit
    def predict(v, xb):
        return jnp.argmax(model.apply(v, xb, train=False), -1)

    provenance = T.checkpoint_provenance(
        "batch_norm", seed, model=repr(model), epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
        steps=steps, augment=None if augment_fn is None else augment_fn, start=variables,
        data=[list(x.shape), y])
    start, done_steps, history = 0, 0, []
    if checkpoint is not None and os.path.exists(checkpoint):
        state, meta = T.load_checkpoint(checkpoint, state, expect=provenance)
        start, done_steps, history = meta["epoch"], meta["step"], meta["history"]
        log(f"[batch_norm] resumed from {checkpoint} at epoch {start}")
    base = jax.random.key(seed)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        losses, accs = [], []
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            state, loss, acc = step(state, x[idx], y[idx], jax.random.fold_in(base, done_steps))
            losses.append(loss)
            accs.append(acc)
            done_steps += 1
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
                  "train_acc": float(np.mean(jax.device_get(accs)))}
        if eval_data is not None:
            xt, yt = eval_data
            hits = [np.asarray(predict(state["variables"], xt[j:j + 500]))
                    for j in range(0, len(xt), 500)]
            record["test_acc"] = float(np.mean(np.concatenate(hits) == np.asarray(yt)))
        record["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(record)
        log(f"[batch_norm] epoch {epoch + 1}/{epochs} " +
            " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        if checkpoint is not None:
            T.save_checkpoint(checkpoint, state, epoch=epoch + 1, step=done_steps, seed=seed,
                              done=epoch + 1 == epochs, history=history, provenance=provenance)
    return state["variables"], history
