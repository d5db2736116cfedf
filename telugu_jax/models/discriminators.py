"""The original `DACDiscriminator`: multi-period (`mpd`) and multi-scale STFT (`msd`) parts.

Feature maps are channels-last (`[B, H, W, C]`); logits are flattened to `[B, -1]` in PyTorch's
order. Parameter names follow the original state dict (`mpd.discriminators.{i}.convs.{j}` →
`mpd/discriminators_{i}/convs_{j}`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from telugu_jax.models.layers import Conv2d, stft

LEAKY_SLOPE = 0.1


class PeriodDiscriminator(nn.Module):
  """Folds `[B, T]` into `[B, T/p, p, 1]` and convolves along the first spatial axis.

  Every kernel is `(k, 1)`: the `p` columns never mix. They are computed folded into the batch
  (`[B * p, T/p, C]`, 1-D convolutions) and the feature maps unfolded to `[B, T/p, p, C]`.
  """

  period: int
  channels: Sequence[int] = (32, 128, 512, 1024, 1024)
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    batch, length = x.shape
    if length % self.period:
      x = jnp.pad(x, ((0, 0), (0, self.period - length % self.period)), mode="reflect")
    x = jnp.swapaxes(x.reshape(batch, -1, self.period), 1, 2)  # [B, p, T/p]
    x = x.reshape(batch * self.period, -1, 1).astype(self.dtype)

    def unfold(y):  # [B * p, H, C] → [B, H, p, C]
      return jnp.swapaxes(y.reshape(batch, self.period, *y.shape[1:]), 1, 2)

    features = []
    for i, out in enumerate(self.channels):
      stride = (3, 1) if i < len(self.channels) - 1 else (1, 1)
      x = Conv2d(out, (5, 1), stride, (2, 0), weight_norm=True, width_in_batch=True,
                 name=f"convs_{i}")(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
      features.append(unfold(x))
    x = unfold(Conv2d(1, (3, 1), (1, 1), (1, 0), weight_norm=True, width_in_batch=True,
                      name="conv_post")(x))
    features.append(x)
    return x.reshape(batch, -1), features


class STFTDiscriminator(nn.Module):
  """Convolves the (real, imag, magnitude) STFT `[B, freq, frames, 3]`, striding over time."""

  n_fft: int
  channels: int = 32
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    spec = jnp.swapaxes(stft(x.astype(jnp.float32), self.n_fft, self.n_fft // 4), 1, 2)
    x = jnp.stack([spec.real, spec.imag, jnp.abs(spec)], axis=-1).astype(self.dtype)  # [B, F, T, 3]
    layouts = [((3, 9), (1, 1), (1, 4))] + [((3, 9), (1, 2), (1, 4))] * 3 + [((3, 3), (1, 1), (1, 1))]
    features = []
    for i, (kernel, stride, padding) in enumerate(layouts):
      x = Conv2d(self.channels, kernel, stride, padding, weight_norm=True, name=f"convs_{i}")(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
      features.append(x)
    x = Conv2d(1, (3, 3), (1, 1), (1, 1), weight_norm=True, name="conv_post")(x)
    features.append(x)
    return x.reshape(x.shape[0], -1), features


class _PeriodDiscriminators(nn.Module):
  periods: Sequence[int]
  channels: Sequence[int]
  dtype: str

  @nn.compact
  def __call__(self, x):
    return [PeriodDiscriminator(p, self.channels, self.dtype, name=f"discriminators_{i}")(x)
            for i, p in enumerate(self.periods)]


class _STFTDiscriminators(nn.Module):
  n_ffts: Sequence[int]
  channels: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    return [STFTDiscriminator(n, self.channels, self.dtype, name=f"discriminators_{i}")(x)
            for i, n in enumerate(self.n_ffts)]


class Discriminator(nn.Module):
  """`DACDiscriminator(periods=[2, 3, 5, 7, 11], n_ffts=[2048, 1024, 512])`.

  `__call__(audio [B, T])` → `(logits, features)`: 8 logits `[B, -1]` (periods first, then STFTs)
  and, for each, 6 feature maps (5 activations, then the post-conv output).

  `dtype="bfloat16"` runs the convolutions in bfloat16 (the STFT stays float32); logits and
  feature maps are returned in float32.
  """

  periods: Sequence[int] = (2, 3, 5, 7, 11)
  n_ffts: Sequence[int] = (2048, 1024, 512)
  period_channels: Sequence[int] = (32, 128, 512, 1024, 1024)
  stft_channels: int = 32
  dtype: str = "float32"

  @nn.compact
  def __call__(self, audio: jax.Array) -> tuple[list[jax.Array], list[list[jax.Array]]]:
    if audio.ndim == 3:  # [B, 1, T]
      audio = audio[:, 0]
    outputs = (
        _PeriodDiscriminators(self.periods, self.period_channels, self.dtype, name="mpd")(audio)
        + _STFTDiscriminators(self.n_ffts, self.stft_channels, self.dtype, name="msd")(audio))
    f32 = lambda x: x.astype(jnp.float32)
    return ([f32(logits) for logits, _ in outputs],
            [[f32(f) for f in features] for _, features in outputs])
