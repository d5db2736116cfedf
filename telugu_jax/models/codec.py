"""The neural audio codec: convolutional encoder, residual VQ, convolutional decoder.

`Codec` with its defaults is the original `TeluCodec(16000, hidden_dim=1024, codebook_size=1024,
num_quantizers=8)`, layer for layer, with the original's parameter names (see
`reference/original-system.md` §1), including its defects (symmetric padding, utterance-wide
GroupNorm, 199 frames per second). Audio is `[B, T]`; latents and quantized frames `[B, frames, D]`;
codes `[B, n_q, frames]`.

The quantizer's EMA statistics live in the variable collection "vq" (`ema_cluster_size`,
`ema_w`). The module never mutates them: in training mode it returns the updated statistics and
the codebooks they imply as outputs, and the trainer decides where to write them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from telugu_jax.models.layers import (CausalConv1d, Conv1d, ConvTranspose1d, Snake, group_norm)

EMA_DECAY = 0.99
EMA_EPSILON = 1e-5


DEFAULT_STRIDES = (2, 2, 2, 2, 5)


def _down_layout(stride: int) -> tuple[int, int]:
  """Kernel and padding of a resampling conv with `stride` (4/1 for 2, 10/2 for 5)."""
  return 2 * stride, stride // 2


def num_frames(num_samples: int, strides: Sequence[int] = DEFAULT_STRIDES) -> int:
  """Encoder output length: `floor((L + 2p - k) / s) + 1` per layer (16000 → 199)."""
  for stride in strides:
    kernel, padding = _down_layout(stride)
    num_samples = (num_samples + 2 * padding - kernel) // stride + 1
  return num_samples


def num_samples(num_frames: int, strides: Sequence[int] = DEFAULT_STRIDES) -> int:
  """Decoder output length: `(L - 1) * s - 2p + k` per layer (239 → 19136)."""
  for stride in reversed(strides):
    kernel, padding = _down_layout(stride)
    num_frames = (num_frames - 1) * stride - 2 * padding + kernel
  return num_frames


class _Valid:
  """Which time steps of a padded batch are real: zeroes the rest after every layer.

  With `lengths=None` nothing is masked (the training path). Otherwise each layer's output is
  zeroed past its valid length and the GroupNorm statistics skip those steps, so a padded input
  computes exactly what the unpadded one would: symmetric-padding convs see zeros past the end in
  both cases.
  """

  def __init__(self, lengths: jax.Array | None):
    self.lengths = lengths

  def after(self, x: jax.Array, kernel: int = 1, stride: int = 1, padding: int = 0,
            transposed: bool = False) -> tuple[jax.Array, "_Valid"]:
    if self.lengths is None:
      return x, self
    if transposed:
      lengths = (self.lengths - 1) * stride - 2 * padding + kernel
    else:
      lengths = (self.lengths + 2 * padding - kernel) // stride + 1
    valid = _Valid(lengths)
    return x * valid.mask(x)[..., None], valid

  def mask(self, x: jax.Array) -> jax.Array | None:
    if self.lengths is None:
      return None
    return jnp.arange(x.shape[1])[None, :] < self.lengths[:, None]  # [B, T]


class ResidualBlock(nn.Module):
  """GroupNorm → Snake → causal conv(3) → GroupNorm → Snake → conv(1) → + input.

  Computes in the input's dtype (float32 parameters are cast to it).
  """

  @nn.compact
  def __call__(self, x: jax.Array, valid: _Valid) -> jax.Array:
    channels = x.shape[-1]
    mask = valid.mask(x)
    mask = None if mask is None else jnp.broadcast_to(mask[..., None], x.shape)
    h = Snake(name="snake1")(group_norm("norm1", x.dtype)(x, mask=mask))
    h = CausalConv1d(channels, 3, name="conv1")(h)
    h = Snake(name="snake2")(group_norm("norm2", x.dtype)(h, mask=mask))
    h = Conv1d(channels, 1, name="conv2")(h)
    return valid.after(x + h)[0]


class Encoder(nn.Module):
  """`[B, T, 1]` audio → `[B, frames, hidden_dim]` latent (see `_Valid` for `lengths`)."""

  channels: Sequence[int] = (32, 64, 128, 256, 512)
  strides: Sequence[int] = DEFAULT_STRIDES
  hidden_dim: int = 1024

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    x, valid = _Valid(lengths).after(
        Conv1d(self.channels[0], 7, padding=3, weight_norm=True, name="proj")(x), 7, 1, 3)
    out_channels = list(self.channels[1:]) + [self.hidden_dim]
    for i, (stride, out) in enumerate(zip(self.strides, out_channels)):
      kernel, padding = _down_layout(stride)
      x, valid = valid.after(
          Conv1d(out, kernel, stride, padding, weight_norm=True, name=f"encoder_{2 * i}")(x),
          kernel, stride, padding)
      if i < len(self.strides) - 1:
        x = ResidualBlock(name=f"encoder_{2 * i + 1}")(x, valid)
    return x


class Decoder(nn.Module):
  """`[B, frames, hidden_dim]` → `[B, T', 1]` audio in (-1, 1) (see `_Valid` for `lengths`)."""

  channels: Sequence[int] = (512, 256, 128, 64, 32, 32)
  strides: Sequence[int] = (5, 2, 2, 2, 2)

  @nn.compact
  def __call__(self, z: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    valid = _Valid(lengths)
    z = valid.after(z)[0]
    x, valid = valid.after(
        Conv1d(self.channels[0], 7, padding=3, weight_norm=True, name="proj")(z), 7, 1, 3)
    for i, (stride, out) in enumerate(zip(self.strides, self.channels[1:])):
      kernel, padding = _down_layout(stride)
      x, valid = valid.after(
          ConvTranspose1d(out, kernel, stride, padding, weight_norm=True,
                          name=f"decoder_{2 * i}")(x), kernel, stride, padding, transposed=True)
      if i < len(self.strides) - 1:
        x = ResidualBlock(name=f"decoder_{2 * i + 1}")(x, valid)
    return jnp.tanh(Conv1d(1, 7, padding=3, name="final_conv")(x))


def nearest_codes(residual: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the Euclidean-nearest codebook row for each vector: `[..., D]` → `[...]`."""
  # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2; ||r||^2 does not change the argmin.
  scores = jnp.sum(codebook * codebook, axis=-1) - 2.0 * residual @ codebook.T
  return jnp.argmin(scores, axis=-1).astype(jnp.int32)


def ema_update(cluster_size: jax.Array, ema_w: jax.Array, residual: jax.Array,
               codes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One level's EMA codebook update, as the original computes it.

  Args:
    cluster_size: `[K]` EMA counts.
    ema_w: `[K, D]` EMA sums of assigned vectors.
    residual: `[N, D]` the vectors this level quantized.
    codes: `[N]` their assignments.
  Returns:
    `(cluster_size, ema_w, codebook)` after the update.
  """
  onehot = jax.nn.one_hot(codes, cluster_size.shape[0], dtype=residual.dtype)  # [N, K]
  cluster_size = EMA_DECAY * cluster_size + (1 - EMA_DECAY) * jnp.sum(onehot, axis=0)
  ema_w = EMA_DECAY * ema_w + (1 - EMA_DECAY) * (onehot.T @ residual)
  n = jnp.sum(cluster_size)
  size = (cluster_size + EMA_EPSILON) / (n + cluster_size.shape[0] * EMA_EPSILON) * n
  return cluster_size, ema_w, ema_w / size[:, None]


class ResidualVQ(nn.Module):
  """Residual vector quantizer with the original's EMA statistics and straight-through sum.

  `straight_through="per_level"` is the original: every level adds `residual + sg(step -
  residual)`, so the decoder's gradient reaches the encoder `num_quantizers` times.
  `"once"` passes it once: `latent + sg(quantized - latent)` (same forward values up to rounding).
  """

  dim: int = 1024
  codebook_size: int = 1024
  num_quantizers: int = 8
  straight_through: str = "per_level"

  def setup(self):
    shape = (self.num_quantizers, self.codebook_size, self.dim)
    self.codebooks = self.param(
        "codebooks", lambda key, s: 0.01 * jax.random.normal(key, s), shape)
    self.ema_cluster_size = self.variable(
        "vq", "ema_cluster_size", jnp.zeros, shape[:2])
    # Drawn independently of the codebooks, as in the original (defect 2).
    self.ema_w = self.variable(
        "vq", "ema_w", lambda s: 0.01 * jax.random.normal(self.make_rng("params"), s), shape)

  def __call__(self, latent: jax.Array, train: bool = False) -> dict[str, Any]:
    """Quantizes `latent` `[B, T, D]`.

    Returns a dict with `quantized` `[B, T, D]` (straight-through), `codes` `[B, n_q, T]`,
    `residuals` and `codewords` (`[n_q, B, T, D]`: each level's input and its chosen codebook rows,
    for the VQ loss) and, when `train`, `ema_cluster_size`, `ema_w` and `codebooks` after one EMA
    update. Every level searches the codebooks as they were before the update.
    """
    if self.straight_through not in ("per_level", "once"):
      raise ValueError(f"straight_through must be 'per_level' or 'once', got {self.straight_through!r}")
    codebooks = jnp.asarray(self.codebooks)
    batch, frames, dim = latent.shape
    residual = latent
    quantized = jnp.zeros_like(latent)
    codes, residuals, codewords, updates = [], [], [], []
    for q in range(self.num_quantizers):
      indices = nearest_codes(residual, codebooks[q])  # [B, T]
      step = codebooks[q][indices]  # [B, T, D]
      if train:
        updates.append(ema_update(
            self.ema_cluster_size.value[q], self.ema_w.value[q],
            jax.lax.stop_gradient(residual).reshape(batch * frames, dim),
            indices.reshape(-1)))
      if self.straight_through == "per_level":
        quantized = quantized + (residual + jax.lax.stop_gradient(step - residual))
      else:
        quantized = quantized + jax.lax.stop_gradient(step)
      codes.append(indices)
      residuals.append(residual)
      codewords.append(step)
      residual = residual - jax.lax.stop_gradient(step)
    if self.straight_through == "once":
      quantized = latent + jax.lax.stop_gradient(quantized - latent)
    out = {"quantized": quantized, "codes": jnp.stack(codes, axis=1),
           "residuals": jnp.stack(residuals), "codewords": jnp.stack(codewords)}
    if train:
      out["ema_cluster_size"], out["ema_w"], out["codebooks"] = (
          jnp.stack(u) for u in zip(*updates))
    return out

  def lookup(self, codes: jax.Array) -> jax.Array:
    """`[B, n_q, T]` codes → `[B, T, D]`, the sum of each level's codebook rows."""
    codebooks = jnp.asarray(self.codebooks)
    return sum(codebooks[q][codes[:, q]] for q in range(codes.shape[1]))


class Codec(nn.Module):
  """The original `TeluCodec`. Methods: `__call__` (train or eval forward), `encode`, `decode`.

  `dtype="bfloat16"` runs the encoder and decoder convolutions in bfloat16 (parameters stay
  float32); the quantizer and every output are float32.
  """

  encoder_channels: Sequence[int] = (32, 64, 128, 256, 512)
  decoder_channels: Sequence[int] = (512, 256, 128, 64, 32, 32)
  strides: Sequence[int] = DEFAULT_STRIDES
  hidden_dim: int = 1024
  codebook_size: int = 1024
  num_quantizers: int = 8
  straight_through: str = "per_level"
  dtype: str = "float32"

  def setup(self):
    self.encoder = Encoder(self.encoder_channels, self.strides, self.hidden_dim)
    self.quantizer = ResidualVQ(self.hidden_dim, self.codebook_size, self.num_quantizers,
                                self.straight_through)
    self.decoder = Decoder(self.decoder_channels, tuple(reversed(self.strides)))

  def __call__(self, audio: jax.Array, train: bool = False) -> dict[str, Any]:
    """Encode → quantize → decode. `audio` `[B, T]`.

    Returns the quantizer's outputs plus `latent` `[B, frames, D]` and `audio` `[B, T]`, the
    reconstruction trimmed, or zero-padded at the end, to the input length.
    """
    length = audio.shape[-1]
    latent = self._encode(audio)
    out = self.quantizer(latent, train=train)
    recon = self._decode(out["quantized"])
    recon = recon[:, :length] if recon.shape[1] >= length else jnp.pad(
        recon, ((0, 0), (0, length - recon.shape[1])))
    return {**out, "latent": latent, "audio": recon}

  def encode(self, audio: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """`[B, T]` audio → int32 codes `[B, n_q, frames]`.

    `lengths` (`[B]` sample counts) marks zero-padding at the end of each row: the valid codes
    (the first `num_frames(length)`) are then those of the unpadded audio.
    """
    return self.quantizer(self._encode(audio, lengths))["codes"]

  def decode(self, codes: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """int codes `[B, n_q, frames]` → audio `[B, T']` (untrimmed decoder output).

    `lengths` (`[B]` frame counts) marks padding frames, as for `encode`.
    """
    return self._decode(self.quantizer.lookup(codes), lengths)

  def _encode(self, audio: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    return self.encoder(audio[..., None].astype(self.dtype), lengths).astype(jnp.float32)

  def _decode(self, quantized: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    return self.decoder(quantized.astype(self.dtype), lengths)[..., 0].astype(jnp.float32)
