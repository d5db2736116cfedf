"""Building blocks shared by the codec and the discriminators.

Activations are channels-last (`[B, T, C]` for 1-D, `[B, H, W, C]` for 2-D). Convolution weights
keep PyTorch's layouts and names (`weight` or the weight-norm pair `weight_g`/`weight_v`, and
`bias`) so that an original state dict maps onto the parameters one to one; XLA reads the kernel
in that layout directly through the convolution's dimension numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# PyTorch's eps for every normalisation layer (flax defaults to 1e-6).
TORCH_NORM_EPS = 1e-5

_DIMENSION_NUMBERS = {1: ("NWC", "OIW", "NWC"), 2: ("NHWC", "OIHW", "NHWC")}


def weight_norm(g: jax.Array, v: jax.Array) -> jax.Array:
  """PyTorch's `weight_norm(dim=0)`: `g * v / ||v||`, the norm over every axis but axis 0."""
  axes = tuple(range(1, v.ndim))
  return g * v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


def _torch_uniform_init(fan_in: int):
  """PyTorch's default conv initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class _TorchLayoutConv(nn.Module):
  """An N-d convolution whose parameters are PyTorch's, optionally weight-normed.

  `transposed=False`: weight `[out, in, *kernel]`, like `ConvNd`.
  `transposed=True`: weight `[in, out, *kernel]`, like `ConvTransposeNd` (output length
  `(L - 1) * stride - 2 * padding + kernel`), with weight norm over axis 0, the input channels.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  padding: Sequence[tuple[int, int]]
  dilation: Sequence[int]
  use_weight_norm: bool
  transposed: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = tuple(self.kernel_size)
    shape = ((in_features, self.features) if self.transposed
             else (self.features, in_features)) + kernel
    # PyTorch computes fan-in from weight.size(1) for both conv and transposed conv.
    init = _torch_uniform_init(shape[1] * int(np.prod(kernel)))
    if self.use_weight_norm:
      v = self.param("weight_v", init, shape)
      # PyTorch initialises g to ||v||, so the initial weight equals v.
      g = self.param("weight_g", lambda _: jnp.sqrt(
          jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True)))
      weight = weight_norm(g, v)
    else:
      weight = self.param("weight", init, shape)
    bias = self.param("bias", init, (self.features,))

    ndim = len(kernel)
    if self.transposed:
      # A transposed convolution is a convolution of the stride-dilated input with the flipped,
      # in/out-swapped kernel, padded by (k - 1 - p) on both sides.
      weight = jnp.flip(jnp.swapaxes(weight, 0, 1), axis=tuple(range(2, 2 + ndim)))
      padding = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, self.padding)]
      y = jax.lax.conv_general_dilated(
          x, weight.astype(x.dtype), window_strides=(1,) * ndim, padding=padding,
          lhs_dilation=tuple(self.strides), rhs_dilation=tuple(self.dilation),
          dimension_numbers=_DIMENSION_NUMBERS[ndim])
    else:
      y = jax.lax.conv_general_dilated(
          x, weight.astype(x.dtype), window_strides=tuple(self.strides),
          padding=list(self.padding), rhs_dilation=tuple(self.dilation),
          dimension_numbers=_DIMENSION_NUMBERS[ndim])
    return y + bias.astype(y.dtype)


def Conv1d(features: int, kernel_size: int, stride: int = 1, padding: int | tuple[int, int] = 0,
           dilation: int = 1, weight_norm: bool = False, name: str | None = None):
  """`torch.nn.Conv1d` on `[B, T, C]` (symmetric `padding`, or a `(left, right)` pair)."""
  pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return _TorchLayoutConv(features, (kernel_size,), (stride,), (pad,), (dilation,),
                          use_weight_norm=weight_norm, name=name)


def ConvTranspose1d(features: int, kernel_size: int, stride: int = 1, padding: int = 0,
                    weight_norm: bool = False, name: str | None = None):
  """`torch.nn.ConvTranspose1d` on `[B, T, C]`."""
  return _TorchLayoutConv(features, (kernel_size,), (stride,), ((padding, padding),), (1,),
                          use_weight_norm=weight_norm, transposed=True, name=name)


def Conv2d(features: int, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), weight_norm: bool = False, name: str | None = None):
  """`torch.nn.Conv2d` on `[B, H, W, C]`."""
  return _TorchLayoutConv(features, kernel_size, stride, tuple((p, p) for p in padding), (1, 1),
                          use_weight_norm=weight_norm, name=name)


class CausalConv1d(nn.Module):
  """Left-pads `(k - 1) * dilation` zeros, then an unpadded `Conv1d` (submodule `conv`)."""

  features: int
  kernel_size: int
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv1d(self.features, self.kernel_size, padding=((self.kernel_size - 1) * self.dilation, 0),
                  dilation=self.dilation, name="conv")(x)


class Snake(nn.Module):
  """`x + sin(alpha * x)^2 / alpha` with a learned per-channel `alpha` (no epsilon)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)
    return x + (1.0 / alpha) * jnp.sin(alpha * x) ** 2


def group_norm(name: str | None = None, dtype=None) -> nn.GroupNorm:
  """PyTorch's `GroupNorm(1, C)`: one group over all of time and channels, eps 1e-5.

  Statistics are reduced in float32 whatever `dtype` (the output's) is.
  """
  return nn.GroupNorm(num_groups=1, epsilon=TORCH_NORM_EPS, use_fast_variance=False, dtype=dtype,
                      name=name)


def hann_window(n: int) -> np.ndarray:
  """Periodic Hann window, as `torch.hann_window(n)` (the default `periodic=True`)."""
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """`torch.stft(x, n_fft, hop, window=hann(n_fft), center=True, pad_mode="reflect")`.

  Args:
    x: `[B, T]` real signal, `T > n_fft // 2`.
  Returns:
    complex `[B, frames, n_fft // 2 + 1]` with `frames = 1 + T // hop` (time before frequency,
    the transpose of PyTorch's layout).
  """
  x = jnp.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
  num_frames = 1 + (x.shape[-1] - n_fft) // hop
  index = hop * np.arange(num_frames)[:, None] + np.arange(n_fft)[None, :]
  frames = x[:, index] * hann_window(n_fft)  # [B, frames, n_fft]
  return jnp.fft.rfft(frames, axis=-1)
