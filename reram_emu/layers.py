"""Building blocks of the package's own models (:mod:`reram_emu.models`): dense and convolution
layer shapes, He initialization, convolution as im2col, max pooling. Nothing here is crossbar
specific: :func:`reram_emu.nn.analog` finds a model's crossbar products by tracing it.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["ROW_ORDERS", "DenseSpec", "ConvSpec", "init_layer", "im2col", "conv_output_shape",
           "conv_weight_to_hwio", "max_pool"]

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
