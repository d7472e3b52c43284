"""The package's own classifiers as plain JAX: ``init(key) -> params`` and a pure
``apply(params, x) -> logits``, like any model a researcher brings.

Parameters are a dict ``{layer name: {"w": (K, N), "b": (N,)}}``: each ``w`` is a weight matrix
in the package's (in_features, out_features) convention, convolutions in im2col form
(:mod:`reram_emu.layers`), so the products ``x @ w`` are exactly the matrices the crossbars
hold. Nothing here knows about crossbars: :func:`reram_emu.nn.analog` finds the products by
tracing ``apply`` (``analog(net.apply, preset("forms"), nonnegative_inputs=True)``), as it does
for a Flax or Equinox model.

* :func:`mlp`: dense layers with ReLU, e.g. 64-128-64-10 for scikit-learn's 8x8 digits.
* :func:`lenet5`: LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, as in the FORMS
  evaluation (Yuan et al., ISCA 2021): conv 5x5x6 (SAME) - pool 2 - conv 5x5x16 (VALID) - pool 2
  - fc 400-120 - fc 120-84 - fc 84-10 on 28x28x1 inputs (61,706 parameters).
* :func:`lenet5_caffe`: the "LeNet-5" of Caffe's MNIST example, the network of the ADMM
  pruning papers FORMS builds on (Zhang et al., ECCV 2018; Ren et al., ADMM-NN, ASPLOS 2019):
  conv 5x5x20 (VALID) - pool 2 - conv 5x5x50 (VALID) - pool 2 - fc 800-500 - fc 500-10
  (431,080 parameters, 430,500 weights), with ReLU between the dense layers.
* :func:`convnet`: any such stack of convolutions (each followed by ReLU and pooling) and
  dense layers.

Why plain functions and not Flax or Equinox modules: the core package then needs neither (they
stay optional extras), and the parameter layout and the float arithmetic are those every
committed result was computed with. A :class:`Network` only names the architecture (a frozen,
hashable dataclass: a static argument of ``jax.jit`` and part of a checkpoint's provenance).
All inputs of these models are non-negative (images in [0, 1], then ReLU outputs), so declare
``nonnegative_inputs=True`` when putting them on unsigned bit-serial crossbars.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .layers import ConvSpec, DenseSpec, conv_output_shape, im2col, init_layer, max_pool

__all__ = ["Network", "mlp", "lenet5", "lenet5_caffe", "convnet", "count_parameters"]


@dataclass(frozen=True)
class Network:
    """A feed-forward classifier: ``init`` and the pure ``apply``.

    Attributes:
      name: e.g. ``"mlp"`` or ``"lenet5"``.
      layers: ``((name, spec), ...)`` in forward order (DenseSpec or ConvSpec): the shapes
        ``init`` draws and ``apply`` computes.
      input_shape: one example's shape, e.g. (28, 28, 1) (flat inputs are reshaped to it
        before the first convolution; an MLP flattens).
      num_classes: outputs of the last layer.
      pool: max-pooling size after every convolution.
    """

    name: str
    layers: tuple
    input_shape: tuple
    num_classes: int
    pool: int = 2

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The parameter dict's layer names in forward order."""
        return tuple(name for name, _ in self.layers)

    def init(self, key: jax.Array, dtype=jnp.float32) -> dict:
        """He-initialized parameters ``{name: {"w": (K, N), "b": (N,)}}``."""
        keys = jax.random.split(key, len(self.layers))
        return {name: init_layer(k, spec, dtype) for k, (name, spec) in zip(keys, self.layers)}

    def apply(self, params: dict, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of inputs ``x`` (B, *input_shape) (or already flat)."""
        h = x
        last = len(self.layers) - 1
        for index, (name, spec) in enumerate(self.layers):
            w, b = params[name]["w"], params[name]["b"]
            if isinstance(spec, ConvSpec):
                if h.ndim == 2:
                    h = h.reshape((h.shape[0],) + tuple(self.input_shape))
                patches = im2col(h, spec)
                bsz, ho, wo, k = patches.shape
                h = (patches.reshape(bsz * ho * wo, k) @ w).reshape(bsz, ho, wo, -1) + b
                h = jax.nn.relu(h)
                if self.pool > 1:
                    h = max_pool(h, self.pool)
            else:
                if h.ndim > 2:
                    h = h.reshape(h.shape[0], -1)
                h = h @ w + b
                if index < last:
                    h = jax.nn.relu(h)
        return h


def mlp(sizes=(64, 128, 64, 10), input_shape=None) -> Network:
    """Dense layers of the given widths (``sizes[0]`` inputs, ``sizes[-1]`` classes), ReLU."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
    layers = tuple((f"fc{i + 1}", DenseSpec(a, b)) for i, (a, b) in enumerate(zip(sizes[:-1],
                                                                                 sizes[1:])))
    shape = (sizes[0],) if input_shape is None else tuple(input_shape)
    return Network("mlp", layers, shape, sizes[-1])


def convnet(name: str, convs, dense, input_shape, pool: int = 2) -> Network:
    """Convolutions ``convs`` ((layer name, ConvSpec), ...), each followed by ReLU and
    ``pool`` max pooling, then dense layers ``dense`` ((layer name, DenseSpec), ...) with ReLU
    between them; the last dense layer's width is the number of classes."""
    layers = tuple(convs) + tuple(dense)
    if not dense:
        raise ValueError("a convnet needs at least one dense layer (its classifier)")
    for layer_name, spec in layers:
        if not isinstance(spec, (ConvSpec, DenseSpec)):
            raise TypeError(f"layer {layer_name!r}: spec must be a ConvSpec or DenseSpec, got "
                            f"{type(spec).__name__}")
    return Network(name, layers, tuple(input_shape), dense[-1][1].out_features, pool)


def lenet5(input_shape=(28, 28, 1), num_classes: int = 10, row_order: str = "channel",
           channels=(6, 16), hidden=(120, 84)) -> Network:
    """LeNet-5 with ReLU and 2x2 max pooling; convolutions as im2col in ``row_order``."""
    h, w, c = input_shape
    conv1 = ConvSpec(c, channels[0], (5, 5), 1, "SAME", row_order)
    h1, w1 = conv_output_shape(conv1, h, w)
    h1, w1 = h1 // 2, w1 // 2
    conv2 = ConvSpec(channels[0], channels[1], (5, 5), 1, "VALID", row_order)
    h2, w2 = conv_output_shape(conv2, h1, w1)
    h2, w2 = h2 // 2, w2 // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"input {input_shape} is too small for LeNet-5")
    flat = h2 * w2 * channels[1]
    net = convnet("lenet5", (("conv1", conv1), ("conv2", conv2)),
                  (("fc1", DenseSpec(flat, hidden[0])), ("fc2", DenseSpec(hidden[0], hidden[1])),
                   ("fc3", DenseSpec(hidden[1], num_classes))), input_shape)
    return net


def lenet5_caffe(input_shape=(28, 28, 1), num_classes: int = 10,
                 row_order: str = "channel") -> Network:
    """The LeNet-5 of Caffe's MNIST example (20 and 50 VALID 5x5 filters, fc 500) with ReLU and
    2x2 max pooling: 431,080 parameters on 28x28x1. The model the ADMM pruning literature (and
    FORMS's Table I) prunes; :func:`lenet5` is LeCun's smaller original."""
    h, w, c = input_shape
    conv1 = ConvSpec(c, 20, (5, 5), 1, "VALID", row_order)
    h1, w1 = conv_output_shape(conv1, h, w)
    conv2 = ConvSpec(20, 50, (5, 5), 1, "VALID", row_order)
    h2, w2 = conv_output_shape(conv2, h1 // 2, w1 // 2)
    h2, w2 = h2 // 2, w2 // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"input {input_shape} is too small for LeNet-5 (Caffe): at least "
                         "16x16 pixels")
    return convnet("lenet5_caffe", (("conv1", conv1), ("conv2", conv2)),
                   (("fc1", DenseSpec(h2 * w2 * 50, 500)),
                    ("fc2", DenseSpec(500, num_classes))), input_shape)


def count_parameters(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
