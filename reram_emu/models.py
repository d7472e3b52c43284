"""Models as pure-JAX pytrees of parameters plus apply functions: an MLP and a LeNet-5-style CNN.

Parameters are a dict ``{layer name: {"w": (K, N), "b": (N,)}}``; every ``w`` is a crossbar
weight matrix in the package's (in_features, out_features) convention, convolutions in im2col
form (:mod:`reram_emu.layers`). ``Model.apply(params, x, runner)`` runs the same parameters
ideally (default), noise-aware or through the emulator, depending on the runner.

* :func:`mlp`: dense layers with ReLU, e.g. 64-128-64-10 for scikit-learn's 8x8 digits.
* :func:`lenet5`: LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, as in the FORMS
  evaluation (Yuan et al., ISCA 2021): conv 5x5x6 (SAME) - pool 2 - conv 5x5x16 (VALID) - pool 2
  - fc 400-120 - fc 120-84 - fc 84-10 on 28x28x1 inputs (61,706 parameters).

All crossbar inputs are non-negative (images in [0, 1], then ReLU outputs), so the unsigned
bit-serial input encoding applies to every layer. Biases are added digitally.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .layers import (ConvSpec, DenseSpec, IdealRunner, conv_output_shape, im2col, init_layer,
                     max_pool)

__all__ = ["Model", "mlp", "lenet5", "count_parameters"]


@dataclass(frozen=True)
class Model:
    """A feed-forward classifier (hashable: a static argument of ``jax.jit``).

    Attributes:
      name: ``"mlp"`` or ``"lenet5"``.
      layers: ``((name, spec), ...)`` in forward order; specs are DenseSpec or ConvSpec.
      input_shape: one example's shape, e.g. (28, 28, 1) (an MLP flattens it).
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
        return tuple(name for name, _ in self.layers)

    def spec(self, name: str):
        return dict(self.layers)[name]

    def init(self, key: jax.Array, dtype=jnp.float32) -> dict:
        """He-initialized parameters ``{name: {"w": (K, N), "b": (N,)}}``."""
        keys = jax.random.split(key, len(self.layers))
        return {name: init_layer(k, spec, dtype) for k, (name, spec) in zip(keys, self.layers)}

    def apply(self, params: dict, x: jax.Array, runner=None) -> jax.Array:
        """Logits (B, num_classes) of images ``x`` (B, *input_shape) (or already flat).

        ``runner(index, name, x2d, w)`` computes every crossbar product (default: ideal).
        """
        runner = IdealRunner() if runner is None else runner
        h = x
        last = len(self.layers) - 1
        for index, (name, spec) in enumerate(self.layers):
            w, b = params[name]["w"], params[name]["b"]
            if isinstance(spec, ConvSpec):
                if h.ndim == 2:
                    h = h.reshape((h.shape[0],) + tuple(self.input_shape))
                patches = im2col(h, spec)
                bsz, ho, wo, k = patches.shape
                out = runner(index, name, patches.reshape(bsz * ho * wo, k), w)
                h = out.reshape(bsz, ho, wo, -1) + b
                h = jax.nn.relu(h)
                if self.pool > 1:
                    h = max_pool(h, self.pool)
            else:
                if h.ndim > 2:
                    h = h.reshape(h.shape[0], -1)
                h = runner(index, name, h, w) + b
                if index < last:
                    h = jax.nn.relu(h)
        return h

    def weights(self, params: dict) -> dict:
        """``{name: w}``: the crossbar weight matrices (K, N)."""
        return {name: params[name]["w"] for name in self.layer_names}

    def with_weights(self, params: dict, weights: dict) -> dict:
        """A copy of ``params`` whose weight matrices are replaced by ``weights`` (name -> w)."""
        return {name: {**params[name], "w": weights.get(name, params[name]["w"])}
                for name in params}


def mlp(sizes=(64, 128, 64, 10), input_shape=None) -> Model:
    """Dense layers of the given widths (``sizes[0]`` inputs, ``sizes[-1]`` classes), ReLU."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
    layers = tuple((f"fc{i + 1}", DenseSpec(a, b)) for i, (a, b) in enumerate(zip(sizes[:-1],
                                                                                 sizes[1:])))
    shape = (sizes[0],) if input_shape is None else tuple(input_shape)
    return Model("mlp", layers, shape, sizes[-1])


def lenet5(input_shape=(28, 28, 1), num_classes: int = 10, row_order: str = "channel",
           channels=(6, 16), hidden=(120, 84)) -> Model:
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
    layers = (("conv1", conv1), ("conv2", conv2), ("fc1", DenseSpec(flat, hidden[0])),
              ("fc2", DenseSpec(hidden[0], hidden[1])), ("fc3", DenseSpec(hidden[1], num_classes)))
    return Model("lenet5", layers, tuple(input_shape), num_classes)


def count_parameters(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
