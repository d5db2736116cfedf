"""Building blocks shared by the codec and the discriminators.

Activations are channels-last (`[B, T, C]` for 1-D, `[B, H, W, C]` for 2-D). Convolution weights
keep PyTorch's layouts and names (`weight` or the weight-norm pair `weight_g`/`weight_v`, and
`bias`) so that an original state dict maps onto the parameters one to one.

How a convolution is computed is chosen per backend (`conv_impl`); every choice computes the same
function of the same parameters. XLA:CPU's convolutions need the kernel in another layout than
PyTorch's (a transpose of every large weight, forward and backward), and it computes
input-dilated convolutions (`ConvTranspose1d`, and the gradients of strided 2-D convolutions)
slowly (up to 70× slower than a matmul). So on CPU, 1-D convolutions whose weight outweighs their
im2col columns run as im2col + one matmul against the weight in PyTorch's layout, transposed
convolutions as a matmul + overlap-add, and 2-D convolutions strided along the width as stride-1
convolutions of the space-to-depth input. Elsewhere XLA's convolutions run. The same choice
selects how `matmul` computes its weight gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# PyTorch's eps for every normalisation layer (flax defaults to 1e-6).
TORCH_NORM_EPS = 1e-5

_DIMENSION_NUMBERS = {1: ("NWC", "OIW", "NWC"), 2: ("NHWC", "OIHW", "NHWC")}
_CONV_IMPLS = ("auto", "xla", "rewrite")
_conv_impl = "auto"


@contextlib.contextmanager
def conv_impl(name: str):
  """Selects how convolutions (and `matmul`'s weight gradient) are computed while tracing inside
  the `with` block.

  `"auto"` (the default): on the CPU backend the rewritten forms where they are faster (see the
  module docstring), XLA's convolutions elsewhere. `"xla"`: always XLA's convolutions.
  `"rewrite"`: always the rewritten forms, whatever the sizes. Read when a function is traced: a
  function jitted before keeps the choice it was traced with.
  """
  global _conv_impl
  if name not in _CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {_CONV_IMPLS}, got {name!r}")
  previous, _conv_impl = _conv_impl, name
  try:
    yield
  finally:
    _conv_impl = previous


def _rewrite(cheaper: bool = True) -> bool:
  """Whether to use a rewritten form (`cheaper`: whether it is, where that depends on sizes)."""
  if _conv_impl == "auto":
    return jax.default_backend() == "cpu" and cheaper
  return _conv_impl == "rewrite"


def weight_norm(g: jax.Array, v: jax.Array) -> jax.Array:
  """PyTorch's `weight_norm(dim=0)`: `g * v / ||v||`, the norm over every axis but axis 0."""
  axes = tuple(range(1, v.ndim))
  return g * v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


def fold_weight_norm(params: Any) -> Any:
  """Parameters with every weight-norm pair (`weight_g`, `weight_v`) replaced by the `weight`
  it stands for, computed once: a weight-normed layer given `weight` uses it as it is. For
  inference, where the weights are fixed; the outputs equal the unfolded parameters' up to float
  rounding."""
  if not isinstance(params, dict):
    return params
  if "weight_g" in params and "weight_v" in params:
    folded = {k: v for k, v in params.items() if k not in ("weight_g", "weight_v")}
    folded["weight"] = weight_norm(jnp.asarray(params["weight_g"]), jnp.asarray(params["weight_v"]))
    return folded
  return {k: fold_weight_norm(v) for k, v in params.items()}


def box_filter(weight: jax.Array, width: int) -> jax.Array:
  """`[..., n]` → `[..., n + width - 1]`: the full moving average over `width` taps of the last
  axis."""
  padded = jnp.pad(weight, [(0, 0)] * (weight.ndim - 1) + [(width - 1, width - 1)])
  n = weight.shape[-1] + width - 1
  return sum(padded[..., i:i + n] for i in range(width)) / width


def _torch_uniform_init(fan_in: int):
  """PyTorch's default conv initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def matmul(x: jax.Array, weight: jax.Array) -> jax.Array:
  """`x [..., K]` times `weight [K, N]` → `[..., N]`, with a weight gradient that XLA:CPU
  computes at its matmul rate.

  XLA:CPU runs a dot contracting the leading (row) dimension of both operands, as the weight
  gradient `x^T g` does, through a slower path than a plain row-by-column dot (127 against 173
  GFLOP/s for `[800, 512]^T [800, 2048]` on the 2-core CPU). On the CPU backend the backward pass
  here copies `x^T` into memory first (or, where `K > N`, `g^T`, and computes `(g^T x)^T`), so
  that the gradient is a plain dot; elsewhere, and in the forward pass, it is `lax.dot_general`.
  """
  return _matmul_cpu(x, weight) if _rewrite() else _plain_matmul(x, weight)


def _plain_matmul(x: jax.Array, weight: jax.Array) -> jax.Array:
  return jax.lax.dot_general(x, weight, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _matmul_cpu(x: jax.Array, weight: jax.Array) -> jax.Array:
  return _plain_matmul(x, weight)


def _matmul_cpu_fwd(x, weight):
  return _plain_matmul(x, weight), (x, weight)


def _matmul_cpu_bwd(residuals, g):
  x, weight = residuals
  dx = jax.lax.dot_general(g, weight, (((g.ndim - 1,), (1,)), ((), ())))
  rows, outputs = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # [M, K], [M, N]
  if rows.shape[1] > outputs.shape[1]:
    # Copy the narrower g instead: dW = (g^T x)^T. XLA fuses x's producers (an activation, a
    # dropout mask's hash) into a copy of x^T and recomputes them in its transposed order; the
    # plain dot reads x as the forward pass stored it.
    dw = (jax.lax.optimization_barrier(outputs.T) @ rows).T
  else:
    dw = jax.lax.optimization_barrier(rows.T) @ outputs  # [K, M], kept in memory
  return dx.astype(x.dtype), dw.astype(weight.dtype)


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


def conv_1d_matmul(x: jax.Array, weight: jax.Array, stride: int, padding: tuple[int, int],
                   dilation: int = 1) -> jax.Array:
  """`Conv1d` as im2col + one matmul against the weight in PyTorch's `[out, in, k]` layout.

  The taps are stacked innermost (`[N, T, in, k]`), so the weight is read as `[out, in * k]`
  without a transpose, and its gradient comes out in that layout too.
  """
  batch, _, in_features = x.shape
  out_features, _, kernel = weight.shape
  x = jnp.pad(x, ((0, 0), tuple(padding), (0, 0)))
  length = (x.shape[1] - dilation * (kernel - 1) - 1) // stride + 1
  taps = [x[:, j * dilation:j * dilation + (length - 1) * stride + 1:stride] for j in range(kernel)]
  cols = jnp.stack(taps, axis=-1).reshape(batch, length, in_features * kernel)
  return jax.lax.dot_general(cols, weight.reshape(out_features, in_features * kernel),
                             (((2,), (1,)), ((), ())))


def _im2col_size(x: jax.Array, weight: jax.Array, stride: int, padding: tuple[int, int],
                 dilation: int) -> int:
  batch, length, in_features = x.shape
  kernel = weight.shape[-1]
  out_length = (length + sum(padding) - dilation * (kernel - 1) - 1) // stride + 1
  return batch * out_length * in_features * kernel


def conv_transpose_1d_matmul(x: jax.Array, weight: jax.Array, stride: int,
                             padding: tuple[int, int]) -> jax.Array:
  """`ConvTranspose1d` as one matmul and an overlap-add.

  Every input step contributes `x[t] @ weight[:, :, j]` to output step `t * stride + j - lo`;
  the kernel's taps are grouped into blocks of `stride`, and block `m` of step `t` lands on output
  block `t + m`.

  Args:
    x: `[N, L, in]`.
    weight: `[in, out, k]` (PyTorch's layout).
    stride: the upsampling factor.
    padding: `(lo, hi)` samples cropped from each end.
  Returns:
    `[N, (L - 1) * stride + k - lo - hi, out]`.
  """
  batch, length, in_features = x.shape
  _, out_features, kernel = weight.shape
  blocks = -(-kernel // stride)
  weight = jnp.pad(weight, ((0, 0), (0, 0), (0, blocks * stride - kernel)))
  z = x @ jnp.transpose(weight, (0, 2, 1)).reshape(in_features, blocks * stride * out_features)
  z = z.reshape(batch, length, blocks, stride * out_features)
  y = sum(jnp.pad(z[:, :, m], ((0, 0), (m, blocks - 1 - m), (0, 0))) for m in range(blocks))
  y = y.reshape(batch, (length + blocks - 1) * stride, out_features)
  lo, hi = padding
  return y[:, lo:(length - 1) * stride + kernel - hi]


def conv_2d_space_to_depth(x: jax.Array, weight: jax.Array, strides: tuple[int, int],
                           padding: Sequence[tuple[int, int]]) -> jax.Array:
  """`Conv2d` with a stride along the width only, as a stride-1 convolution.

  The padded input's width is cut into blocks of `stride` steps moved into the channels, and the
  kernel's width taps (zero-padded to whole blocks) likewise, so no gradient needs XLA's slow
  input-dilated convolution.

  Args:
    x: `[N, H, W, C]`.
    weight: `[out, in, kh, kw]` (PyTorch's layout).
    strides: `(1, stride)`.
    padding: `((top, bottom), (left, right))`.
  """
  batch, height, width, in_features = x.shape
  out_features, _, kh, kw = weight.shape
  stride = strides[1]
  (left, right) = padding[1]
  padded = width + left + right
  blocks = -(-padded // stride)
  out_width = (padded - kw) // stride + 1
  x = jnp.pad(x, ((0, 0), (0, 0), (left, right + blocks * stride - padded), (0, 0)))
  x = x.reshape(batch, height, blocks, stride * in_features)
  taps = -(-kw // stride)
  weight = jnp.pad(weight, ((0, 0), (0, 0), (0, 0), (0, taps * stride - kw)))
  weight = jnp.transpose(weight.reshape(out_features, in_features, kh, taps, stride),
                         (0, 4, 1, 2, 3)).reshape(out_features, stride * in_features, kh, taps)
  y = jax.lax.conv_general_dilated(x, weight, window_strides=(strides[0], 1),
                                   padding=[padding[0], (0, 0)],
                                   dimension_numbers=_DIMENSION_NUMBERS[2])
  return y[:, :, :out_width]


def _conv_transpose_xla(x: jax.Array, weight: jax.Array, stride: int,
                        padding: tuple[int, int]) -> jax.Array:
  # A transposed convolution is a convolution of the stride-dilated input with the flipped,
  # in/out-swapped kernel, padded by (k - 1 - p) on both sides.
  kernel = weight.shape[-1]
  lo, hi = padding
  weight = jnp.flip(jnp.swapaxes(weight, 0, 1), axis=2)
  return jax.lax.conv_general_dilated(
      x, weight, window_strides=(1,), padding=[(kernel - 1 - lo, kernel - 1 - hi)],
      lhs_dilation=(stride,), dimension_numbers=_DIMENSION_NUMBERS[1])


class _TorchLayoutConv(nn.Module):
  """An N-d convolution whose parameters are PyTorch's, optionally weight-normed.

  `transposed=False`: weight `[out, in, *kernel]`, like `ConvNd`.
  `transposed=True` (1-D only): weight `[in, out, k]`, like `ConvTranspose1d` (output length
  `(L - 1) * stride - 2 * padding + kernel`), with weight norm over axis 0, the input channels.
  `width_in_batch=True` (2-D kernels `(k, 1)` with width stride 1 and no width padding only): `x`
  is `[N, H, C]` with the width folded into `N`, and the convolution runs as a 1-D one over `H`
  (XLA:CPU runs these ~1.7× faster than the same `(k, 1)` convolution over `[B, H, W, C]`).
  `resize=True` (transposed only; not in the original): the weight parameter has
  `k - stride + 1` taps and the kernel is its moving average over `stride` taps, so the layer
  is a nearest-neighbour upsampling followed by a convolution (a resize-convolution) at the
  transposed convolution's cost. Every output phase then sums the same taps: a constant input
  gives a constant output, without the frame-periodic pattern a free kernel can make.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  padding: Sequence[tuple[int, int]]
  dilation: Sequence[int]
  use_weight_norm: bool
  transposed: bool = False
  width_in_batch: bool = False
  resize: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = tuple(self.kernel_size)
    if self.resize and (not self.transposed or not 1 <= self.strides[0] <= kernel[0]):
      raise ValueError(f"resize needs a transposed conv with 1 <= stride <= kernel, got "
                       f"kernel {kernel}, strides {tuple(self.strides)}")
    taps = (kernel[0] - self.strides[0] + 1,) if self.resize else kernel
    shape = ((in_features, self.features) if self.transposed
             else (self.features, in_features)) + taps
    # PyTorch computes fan-in from weight.size(1) for both conv and transposed conv.
    init = _torch_uniform_init(shape[1] * int(np.prod(taps)))
    if self.use_weight_norm and not self.has_variable("params", "weight"):
      v = self.param("weight_v", init, shape)
      # PyTorch initialises g to ||v||, so the initial weight equals v.
      g = self.param("weight_g", lambda _: jnp.sqrt(
          jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True)))
      weight = weight_norm(g, v)
    else:
      weight = self.param("weight", init, shape)
    bias = self.param("bias", init, (self.features,))
    if self.resize:
      weight = box_filter(weight, self.strides[0])
    weight = weight.astype(x.dtype)

    strides, padding, dilation = tuple(self.strides), list(self.padding), tuple(self.dilation)
    if self.width_in_batch:
      if kernel[1:] != (1,) or strides[1:] != (1,) or padding[1:] != [(0, 0)]:
        raise ValueError(f"width_in_batch needs a (k, 1) kernel over the height only, got "
                         f"kernel {kernel}, strides {strides}, padding {padding}")
      weight, strides, padding, dilation = weight[..., 0], strides[:1], padding[:1], dilation[:1]
    if self.transposed:
      if len(kernel) != 1 or dilation != (1,):
        raise ValueError("transposed convolutions are 1-D and undilated")
      transpose = conv_transpose_1d_matmul if _rewrite() else _conv_transpose_xla
      y = transpose(x, weight, strides[0], padding[0])
    elif len(strides) == 1 and _rewrite(_im2col_size(x, weight, strides[0], padding[0],
                                                     dilation[0]) <= weight.size):
      # im2col writes and reads the columns; XLA's convolution transposes the weight.
      y = conv_1d_matmul(x, weight, strides[0], padding[0], dilation[0])
    elif (len(strides) == 2 and strides[0] == 1 and strides[1] > 1 and dilation == (1, 1)
          and _rewrite()):
      y = conv_2d_space_to_depth(x, weight, strides, padding)
    else:
      y = jax.lax.conv_general_dilated(
          x, weight, window_strides=strides, padding=padding, rhs_dilation=dilation,
          dimension_numbers=_DIMENSION_NUMBERS[len(strides)])
    return y + bias.astype(y.dtype)


def Conv1d(features: int, kernel_size: int, stride: int = 1, padding: int | tuple[int, int] = 0,
           dilation: int = 1, weight_norm: bool = False, name: str | None = None):
  """`torch.nn.Conv1d` on `[B, T, C]` (symmetric `padding`, or a `(left, right)` pair)."""
  pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return _TorchLayoutConv(features, (kernel_size,), (stride,), (pad,), (dilation,),
                          use_weight_norm=weight_norm, name=name)


def ConvTranspose1d(features: int, kernel_size: int, stride: int = 1, padding: int = 0,
                    weight_norm: bool = False, resize: bool = False, name: str | None = None):
  """`torch.nn.ConvTranspose1d` on `[B, T, C]` (`resize`: see `_TorchLayoutConv`)."""
  return _TorchLayoutConv(features, (kernel_size,), (stride,), ((padding, padding),), (1,),
                          use_weight_norm=weight_norm, transposed=True, resize=resize, name=name)


def Conv2d(features: int, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), weight_norm: bool = False,
           width_in_batch: bool = False, name: str | None = None):
  """`torch.nn.Conv2d` on `[B, H, W, C]`.

  `width_in_batch=True`: a `(k, 1)` kernel on `[B * W, H, C]`, the width folded into the batch.
  """
  return _TorchLayoutConv(features, kernel_size, stride, tuple((p, p) for p in padding), (1, 1),
                          use_weight_norm=weight_norm, width_in_batch=width_in_batch, name=name)


class CausalConv1d(nn.Module):
  """Left-pads `(k - 1) * dilation` zeros, then an unpadded `Conv1d` (submodule `conv`).

  `stream=True`: see `StreamingConv1d`.
  """

  features: int
  kernel_size: int
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, stream: bool = False) -> jax.Array:
    return StreamingConv1d(self.features, self.kernel_size, dilation=self.dilation,
                           name="conv")(x, stream)


class StreamingConv1d(nn.Module):
  """A causal `Conv1d` or `ConvTranspose1d` that can also run on a stream, chunk by chunk.

  The parameters are those of `Conv1d` / `ConvTranspose1d` in this module's own scope (same
  names and shapes), so it can stand in for a symmetric layer of the same size. Output step `t`
  reads input steps up to `t` (its own frame) only:
  - convolution: `(k - 1) * dilation + 1 - stride` zeros on the left, none on the right, so `L`
    inputs give `L // stride` outputs and output `t` reads inputs up to `(t + 1) * stride - 1`;
  - transposed (`transposed=True`): the last `k - stride` outputs, the overlap that the next input
    adds to, are trimmed, so `L` inputs give `L * stride` outputs and output block `t` reads
    inputs `<= t`.

  With `stream=True` the left context is the variable "history" of the collection "stream" (the
  previous chunk's last inputs; zeros at the start, as the full pass's padding) and it is
  updated (apply with `mutable=["stream"]`); a convolution's chunk must be a whole number of
  strides. A transposed convolution carries its overlap as the `ceil(k / stride) - 1` previous
  inputs, whose contributions to the overlap it recomputes.
  """

  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  weight_norm: bool = False
  transposed: bool = False
  resize: bool = False  # transposed only: see `_TorchLayoutConv`

  @nn.compact
  def __call__(self, x: jax.Array, stream: bool = False) -> jax.Array:
    k, s, d = self.kernel_size, self.stride, self.dilation
    if self.transposed:
      if d != 1 or k < s:
        raise ValueError(f"a causal transposed conv needs dilation 1 and kernel >= stride, got "
                         f"kernel {k}, stride {s}, dilation {d}")
      context = -(-k // s) - 1  # previous inputs reaching this chunk's outputs
      padding = (context * s if stream else 0, k - s)  # outputs cropped from each end
    else:
      context = (k - 1) * d + 1 - s
      if context < 0:
        raise ValueError(f"a causal conv needs (kernel - 1) * dilation + 1 >= stride, got "
                         f"kernel {k}, stride {s}, dilation {d}")
      padding = (0 if stream else context, 0)
    if stream:
      if not self.transposed and x.shape[1] % s:
        raise ValueError(f"a streamed chunk must be a whole number of strides ({s}), "
                         f"got {x.shape[1]} steps")
      history = self.variable("stream", "history", jnp.zeros,
                              (x.shape[0], context, x.shape[-1]), x.dtype)
      x = jnp.concatenate([history.value, x], axis=1)
      history.value = x[:, x.shape[1] - context:]
    conv = _TorchLayoutConv(self.features, (k,), (s,), (padding,), (d,),
                            use_weight_norm=self.weight_norm, transposed=self.transposed,
                            resize=self.resize)
    nn.share_scope(self, conv)
    return conv(x)


def sin_cos(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(sin(z), cos(z))` of float32 `z`, correctly rounded, in arithmetic that XLA vectorises.

  XLA:CPU computes `jnp.sin` with a scalar library call per element (~4× slower than this, and
  not always correctly rounded). This reduces `z` by pi/2 in float64 (fdlibm's two-part constant)
  and evaluates fdlibm's double-precision kernels, then rounds to float32: exact to the last bit
  for |z| < 2^20, where the reduction is exact.
  """
  with jax.enable_x64(True):
    x = z.astype(jnp.float64)
    j = jnp.round(x * (2 / np.pi))
    r = (x - j * 1.57079632673412561417) - j * 6.07710050650619224932e-11  # |r| <= pi / 4
    r2 = r * r
    sin_r = r + r * r2 * (-1.66666666666666324348e-01 + r2 * (8.33333333332248946124e-03 + r2 * (
        -1.98412698298579493134e-04 + r2 * (2.75573137070700676789e-06 + r2 * (
            -2.50507602534068634195e-08 + r2 * 1.58969099521155010221e-10)))))
    cos_r = 1 - 0.5 * r2 + r2 * r2 * (4.16666666666666019037e-02 + r2 * (
        -1.38888888888741095749e-03 + r2 * (2.48015872894767294178e-05 + r2 * (
            -2.75573143513906633035e-07 + r2 * (2.08757232129817482790e-09
                                                + r2 * -1.13596475577881948265e-11)))))
    quadrant = jnp.mod(j, 4)
    odd, negative = (quadrant == 1) | (quadrant == 3), quadrant >= 2
    sin = jnp.where(odd, cos_r, sin_r)
    cos = jnp.where(odd, -sin_r, cos_r)
    sin, cos = jnp.where(negative, -sin, sin), jnp.where(negative, -cos, cos)
    return sin.astype(jnp.float32), cos.astype(jnp.float32)


@jax.custom_jvp
def snake(x: jax.Array, alpha: jax.Array) -> jax.Array:
  """`x + sin(alpha * x)^2 / alpha`, with `sin` from `sin_cos` (computed in float32).

  Differentiated (training), it evaluates XLA's `sin` and `cos` instead: gradients through the
  discriminators jump where a leaky ReLU's input crosses zero, and such inputs within ~1e-7 of
  zero occur, so the training forward keeps the values its gradient parity with PyTorch is
  tested on.
  """
  sin, _ = sin_cos((alpha * x).astype(jnp.float32))
  return x + (1.0 / alpha) * (sin * sin).astype(x.dtype)


@snake.defjvp
def _snake_jvp(primals, tangents):
  # d/dx = 1 + sin(2 alpha x); d/dalpha = x sin(2 alpha x) / alpha - sin(alpha x)^2 / alpha^2.
  x, alpha = primals
  dx, dalpha = tangents
  sin, cos = jnp.sin(alpha * x), jnp.cos(alpha * x)
  square, double = sin ** 2, 2 * sin * cos
  y = x + (1.0 / alpha) * square
  return y, dx * (1 + double) + dalpha * (x * double / alpha - square / (alpha * alpha))


class Snake(nn.Module):
  """`x + sin(alpha * x)^2 / alpha` with a learned per-channel `alpha` (no epsilon)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],)).astype(x.dtype)
    return snake(x, alpha)


def group_norm(name: str | None = None, dtype=None) -> nn.GroupNorm:
  """PyTorch's `GroupNorm(1, C)`: one group over all of time and channels, eps 1e-5.

  Statistics are reduced in float32 whatever `dtype` (the output's) is.
  """
  return nn.GroupNorm(num_groups=1, epsilon=TORCH_NORM_EPS, use_fast_variance=False, dtype=dtype,
                      name=name)


def channel_norm(name: str | None = None, dtype=None) -> nn.LayerNorm:
  """Normalisation over the channels of each time step, eps 1e-5: the causal codec's stand-in
  for `group_norm` (same `scale`/`bias` parameters), a statistic of the present step only.

  Statistics are reduced in float32 whatever `dtype` (the output's) is.
  """
  return nn.LayerNorm(epsilon=TORCH_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


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
