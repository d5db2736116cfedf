"""The neural audio codec: convolutional encoder, residual VQ, convolutional decoder.

`Codec` with its defaults is the original `TeluCodec(16000, hidden_dim=1024, codebook_size=1024,
num_quantizers=8)`, layer for layer, with the original's parameter names (see
`reference/original-system.md` §1), including its defects (symmetric padding, utterance-wide
GroupNorm, 199 frames per second). Audio is `[B, T]`; latents and quantized frames `[B, frames, D]`;
codes `[B, n_q, frames]`.

`Codec(causal=True)` is the streaming variant with the same parameters: every convolution is
causal (`layers.StreamingConv1d`: left-padded, transposed convolutions trimmed on the right) and
the residual blocks normalise each time step over its channels (`layers.channel_norm`) instead of
over the whole utterance, so frame `j` reads samples `< (j + 1) * hop` only, `T` samples give
`T // hop` frames and `F` frames give `F * hop` samples (`hop` = the product of the strides).
`stream_encode` / `stream_decode` run it chunk by chunk over the state in the collection "stream"
(each causal convolution's input history); see `telugu_jax.inference.streaming`.

The quantizer's EMA statistics live in the variable collection "vq" (`ema_cluster_size`,
`ema_w`). The module never mutates them: in training mode it returns the updated statistics and
the codebooks they imply as outputs, and the trainer decides where to write them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from telugu_jax.models.layers import (CausalConv1d, Conv1d, ConvTranspose1d, Snake,
                                     StreamingConv1d, channel_norm, group_norm)

EMA_DECAY = 0.99
EMA_EPSILON = 1e-5


DEFAULT_STRIDES = (2, 2, 2, 2, 5)


def _down_layout(stride: int) -> tuple[int, int]:
  """Kernel and padding of a resampling conv with `stride` (4/1 for 2, 10/2 for 5)."""
  return 2 * stride, stride // 2


def frame_hop(strides: Sequence[int] = DEFAULT_STRIDES) -> int:
  """Samples per code frame, the product of the strides (80: 200 frames per second at 16 kHz)."""
  return math.prod(strides)


def num_frames(num_samples: int, strides: Sequence[int] = DEFAULT_STRIDES,
               causal: bool = False) -> int:
  """Encoder output length: `floor((L + 2p - k) / s) + 1` per layer (16000 → 199).

  Causal codec: `L // hop` (16000 → 200).
  """
  if causal:
    return num_samples // frame_hop(strides)
  for stride in strides:
    kernel, padding = _down_layout(stride)
    num_samples = (num_samples + 2 * padding - kernel) // stride + 1
  return num_samples


def num_samples(num_frames: int, strides: Sequence[int] = DEFAULT_STRIDES,
                causal: bool = False) -> int:
  """Decoder output length: `(L - 1) * s - 2p + k` per layer (239 → 19136).

  Causal codec: `L * hop` (239 → 19120).
  """
  if causal:
    return num_frames * frame_hop(strides)
  for stride in reversed(strides):
    kernel, padding = _down_layout(stride)
    num_frames = (num_frames - 1) * stride - 2 * padding + kernel
  return num_frames


def decoder_lookahead_frames(strides: Sequence[int] = DEFAULT_STRIDES) -> int:
  """Frames after the last decoded one that the faithful decoder's output reads (4 by default).

  With symmetric padding the decoder's samples up to `F * hop` (the first `F` frames' share)
  read frames up to `F - 1 + lookahead`: follows the last of those samples back through the
  final conv (3 steps ahead), each transposed conv (output `o` reads inputs up to
  `(o + p) // s`), the residual blocks (causal) and the input conv (3 frames ahead).
  """
  step = -1 + 3  # the last sample before frame 0's block, then the final conv
  for stride in strides:  # the decoder's layers from the output back
    step = (step + _down_layout(stride)[1]) // stride
  return step + 3 + 1


def _conv(causal: bool, features: int, kernel: int, stride: int = 1, padding: int = 0,
          weight_norm: bool = True, transposed: bool = False, resize: bool = False,
          name: str | None = None):
  """The faithful layer (symmetric `padding`), or the causal one with the same parameters.

  Both are called as `conv(x, stream)`; only the causal one streams. `resize`: a transposed
  conv as a resize-convolution (`layers._TorchLayoutConv`).
  """
  if causal:
    return StreamingConv1d(features, kernel, stride, weight_norm=weight_norm,
                           transposed=transposed, resize=resize, name=name)
  if transposed:
    conv = ConvTranspose1d(features, kernel, stride, padding, weight_norm=weight_norm,
                           resize=resize, name=name)
  else:
    conv = Conv1d(features, kernel, stride, padding, weight_norm=weight_norm, name=name)
  return lambda x, stream: conv(x)


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

  Computes in the input's dtype (float32 parameters are cast to it). `causal`: each step
  normalised over its channels (`channel_norm`) instead of GroupNorm.
  """

  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, valid: _Valid, stream: bool = False) -> jax.Array:
    channels = x.shape[-1]
    mask = valid.mask(x)
    mask = None if mask is None else jnp.broadcast_to(mask[..., None], x.shape)
    norm = channel_norm if self.causal else group_norm
    h = Snake(name="snake1")(norm("norm1", x.dtype)(x, mask=mask))
    h = CausalConv1d(channels, 3, name="conv1")(h, stream)
    h = Snake(name="snake2")(norm("norm2", x.dtype)(h, mask=mask))
    h = Conv1d(channels, 1, name="conv2")(h)
    return valid.after(x + h)[0]


class Encoder(nn.Module):
  """`[B, T, 1]` audio → `[B, frames, hidden_dim]` latent (see `_Valid` for `lengths`).

  `causal`: see `Codec`; `lengths` is then not needed (a causal layer's outputs never read the
  padding after them) and ignored. `stream`: run one chunk over the "stream" state.
  """

  channels: Sequence[int] = (32, 64, 128, 256, 512)
  strides: Sequence[int] = DEFAULT_STRIDES
  hidden_dim: int = 1024
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None = None,
               stream: bool = False) -> jax.Array:
    x, valid = _Valid(None if self.causal else lengths).after(
        _conv(self.causal, self.channels[0], 7, padding=3, name="proj")(x, stream), 7, 1, 3)
    out_channels = list(self.channels[1:]) + [self.hidden_dim]
    for i, (stride, out) in enumerate(zip(self.strides, out_channels)):
      kernel, padding = _down_layout(stride)
      x, valid = valid.after(
          _conv(self.causal, out, kernel, stride, padding, name=f"encoder_{2 * i}")(x, stream),
          kernel, stride, padding)
      if i < len(self.strides) - 1:
        x = ResidualBlock(self.causal, name=f"encoder_{2 * i + 1}")(x, valid, stream)
    return x


class Decoder(nn.Module):
  """`[B, frames, hidden_dim]` → `[B, T', 1]` audio in (-1, 1) (see `_Valid` for `lengths`).

  `causal`, `stream`: as for `Encoder`. `upsample`: "transposed" (the original's transposed
  convs) or "resize" (the same layers as nearest-neighbour upsampling + convolution, whose
  output for a steady input is steady: `layers._TorchLayoutConv`), not in the original.
  """

  channels: Sequence[int] = (512, 256, 128, 64, 32, 32)
  strides: Sequence[int] = (5, 2, 2, 2, 2)
  causal: bool = False
  upsample: str = "transposed"

  @nn.compact
  def __call__(self, z: jax.Array, lengths: jax.Array | None = None,
               stream: bool = False) -> jax.Array:
    if self.upsample not in ("transposed", "resize"):
      raise ValueError(f"upsample must be 'transposed' or 'resize', got {self.upsample!r}")
    valid = _Valid(None if self.causal else lengths)
    z = valid.after(z)[0]
    x, valid = valid.after(
        _conv(self.causal, self.channels[0], 7, padding=3, name="proj")(z, stream), 7, 1, 3)
    for i, (stride, out) in enumerate(zip(self.strides, self.channels[1:])):
      kernel, padding = _down_layout(stride)
      x, valid = valid.after(
          _conv(self.causal, out, kernel, stride, padding, transposed=True,
                resize=self.upsample == "resize", name=f"decoder_{2 * i}")(x, stream),
          kernel, stride, padding, transposed=True)
      if i < len(self.strides) - 1:
        x = ResidualBlock(self.causal, name=f"decoder_{2 * i + 1}")(x, valid, stream)
    return jnp.tanh(_conv(self.causal, 1, 7, padding=3, weight_norm=False,
                          name="final_conv")(x, stream))


def nearest_codes(residual: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the Euclidean-nearest codebook row for each vector: `[..., D]` → `[...]`."""
  # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2; ||r||^2 does not change the argmin.
  scores = jnp.sum(codebook * codebook, axis=-1) - 2.0 * residual @ codebook.T
  return jnp.argmin(scores, axis=-1).astype(jnp.int32)


def ema_update(cluster_size: jax.Array, ema_w: jax.Array, residual: jax.Array,
               codes: jax.Array, weights: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One level's EMA codebook update, as the original computes it.

  Args:
    cluster_size: `[K]` EMA counts.
    ema_w: `[K, D]` EMA sums of assigned vectors.
    residual: `[N, D]` the vectors this level quantized.
    codes: `[N]` their assignments.
    weights: optional `[N]` 0/1: which vectors count (quantizer dropout); None: all (original).
  Returns:
    `(cluster_size, ema_w, codebook)` after the update.
  """
  onehot = jax.nn.one_hot(codes, cluster_size.shape[0], dtype=residual.dtype)  # [N, K]
  if weights is not None:
    onehot = onehot * weights[:, None]
  cluster_size = EMA_DECAY * cluster_size + (1 - EMA_DECAY) * jnp.sum(onehot, axis=0)
  ema_w = EMA_DECAY * ema_w + (1 - EMA_DECAY) * (onehot.T @ residual)
  n = jnp.sum(cluster_size)
  size = (cluster_size + EMA_EPSILON) / (n + cluster_size.shape[0] * EMA_EPSILON) * n
  return cluster_size, ema_w, ema_w / size[:, None]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """`x / max(||x||, eps)` along the last axis (as `torch.nn.functional.normalize`)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def level_mask(levels: jax.Array | None, num_quantizers: int) -> jax.Array | None:
  """`[B]` level counts → `[n_q, B]` float mask, 1.0 where level q < levels (None: None)."""
  if levels is None:
    return None
  return (jnp.arange(num_quantizers)[:, None] < levels[None, :]).astype(jnp.float32)


class ResidualVQ(nn.Module):
  """Residual vector quantizer: the original's EMA codebooks, or DAC's factorised codes.

  With `codebook_dim=0` (the original) every level's codebook lives in the latent space and is
  updated by EMA. `straight_through="per_level"` is the original: every level adds
  `residual + sg(step - residual)`, so the decoder's gradient reaches the encoder
  `num_quantizers` times. `"once"` passes it once: `latent + sg(quantized - latent)` (same forward
  values up to rounding).

  With `codebook_dim=d > 0` (factorised codes, not in the original; as DAC) each level projects
  its residual to `d` dimensions (`in_proj_q`), picks the codebook row of highest cosine
  similarity (L2-normalised lookup), passes the straight-through estimate `z_e + sg(z_q - z_e)`
  back through `out_proj_q`, and subtracts that from the residual. The codebooks are learned by
  gradient (the codebook and commitment terms of the VQ loss): there are no EMA statistics and
  `straight_through` must be "per_level".

  `levels` (`[B]`, quantizer dropout) uses only the first `levels[b]` levels for example `b`: the
  others add nothing to `quantized`, to the gradient, to the EMA statistics or to the VQ loss.
  """

  dim: int = 1024
  codebook_size: int = 1024
  num_quantizers: int = 8
  straight_through: str = "per_level"
  codebook_dim: int = 0

  def setup(self):
    if self.codebook_dim:
      shape = (self.num_quantizers, self.codebook_size, self.codebook_dim)
      self.codebooks = self.param("codebooks", nn.initializers.normal(1.0), shape)
      self.in_proj = [nn.Dense(self.codebook_dim) for _ in range(self.num_quantizers)]
      self.out_proj = [nn.Dense(self.dim) for _ in range(self.num_quantizers)]
      return
    shape = (self.num_quantizers, self.codebook_size, self.dim)
    self.codebooks = self.param(
        "codebooks", lambda key, s: 0.01 * jax.random.normal(key, s), shape)
    self.ema_cluster_size = self.variable(
        "vq", "ema_cluster_size", jnp.zeros, shape[:2])
    # Drawn independently of the codebooks, as in the original (defect 2).
    self.ema_w = self.variable(
        "vq", "ema_w", lambda s: 0.01 * jax.random.normal(self.make_rng("params"), s), shape)

  def __call__(self, latent: jax.Array, train: bool = False,
               levels: jax.Array | None = None) -> dict[str, Any]:
    """Quantizes `latent` `[B, T, D]`.

    Args:
      latent: `[B, T, D]` encoder output.
      train: return the EMA update (EMA codebooks only).
      levels: optional int `[B]` in 1..n_q, levels used per example (quantizer dropout).

    Returns a dict with `quantized` `[B, T, D]` (straight-through), `codes` `[B, n_q, T]`,
    `residuals` and `codewords` (`[n_q, B, T, d]`: each level's input and its chosen codebook
    rows, in the codebook space, for the VQ loss), `level_mask` (`[n_q, B]`, when `levels` is
    given) and, when `train` with EMA codebooks, `ema_cluster_size`, `ema_w` and `codebooks`
    after one EMA update. Every level searches the codebooks as they were before the update.
    """
    if self.straight_through not in ("per_level", "once"):
      raise ValueError(f"straight_through must be 'per_level' or 'once', got {self.straight_through!r}")
    if self.codebook_dim and self.straight_through != "per_level":
      raise ValueError("factorised codes (codebook_dim > 0) pass the straight-through gradient "
                       f"per level: straight_through must be 'per_level', got {self.straight_through!r}")
    codebooks = jnp.asarray(self.codebooks)
    batch, frames, dim = latent.shape
    mask = level_mask(levels, self.num_quantizers)
    residual = latent
    quantized = jnp.zeros_like(latent)
    codes, residuals, codewords, updates = [], [], [], []
    for q in range(self.num_quantizers):
      keep = None if mask is None else mask[q][:, None, None]  # [B, 1, 1]
      if self.codebook_dim:
        z_e = self.in_proj[q](residual)  # [B, T, d]
        indices = nearest_codes(l2_normalize(z_e), l2_normalize(codebooks[q]))
        z_q = codebooks[q][indices]
        step = self.out_proj[q](z_e + jax.lax.stop_gradient(z_q - z_e))  # [B, T, D]
        quantized = quantized + (step if keep is None else step * keep)
        residuals.append(z_e)
        codewords.append(z_q)
        residual = residual - step
      else:
        indices = nearest_codes(residual, codebooks[q])  # [B, T]
        step = codebooks[q][indices]  # [B, T, D]
        if train:
          weights = None if mask is None else jnp.repeat(mask[q], frames)
          updates.append(ema_update(
              self.ema_cluster_size.value[q], self.ema_w.value[q],
              jax.lax.stop_gradient(residual).reshape(batch * frames, dim),
              indices.reshape(-1), weights))
        if self.straight_through == "per_level":
          add = residual + jax.lax.stop_gradient(step - residual)
        else:
          add = jax.lax.stop_gradient(step)
        quantized = quantized + (add if keep is None else add * keep)
        residuals.append(residual)
        codewords.append(step)
        residual = residual - jax.lax.stop_gradient(step)
      codes.append(indices)
    if self.straight_through == "once":
      quantized = latent + jax.lax.stop_gradient(quantized - latent)
    out = {"quantized": quantized, "codes": jnp.stack(codes, axis=1),
           "residuals": jnp.stack(residuals), "codewords": jnp.stack(codewords)}
    if mask is not None:
      out["level_mask"] = mask
    if train and not self.codebook_dim:
      out["ema_cluster_size"], out["ema_w"], out["codebooks"] = (
          jnp.stack(u) for u in zip(*updates))
    return out

  def lookup(self, codes: jax.Array) -> jax.Array:
    """`[B, n_q', T]` codes → `[B, T, D]`: the sum of the first `n_q'` levels' contributions."""
    codebooks = jnp.asarray(self.codebooks)
    if self.codebook_dim:
      return sum(self.out_proj[q](codebooks[q][codes[:, q]]) for q in range(codes.shape[1]))
    return sum(codebooks[q][codes[:, q]] for q in range(codes.shape[1]))


class Codec(nn.Module):
  """The original `TeluCodec`. Methods: `__call__` (train or eval forward), `encode`, `decode`.

  `dtype="bfloat16"` runs the encoder and decoder convolutions in bfloat16 (parameters stay
  float32); the quantizer and every output are float32. `causal=True`: the streaming variant
  (module docstring), with `stream_encode` and `stream_decode`.
  """

  encoder_channels: Sequence[int] = (32, 64, 128, 256, 512)
  decoder_channels: Sequence[int] = (512, 256, 128, 64, 32, 32)
  strides: Sequence[int] = DEFAULT_STRIDES
  hidden_dim: int = 1024
  codebook_size: int = 1024
  num_quantizers: int = 8
  straight_through: str = "per_level"
  codebook_dim: int = 0  # > 0: factorised codes (see `ResidualVQ`), not in the original
  dtype: str = "float32"
  causal: bool = False  # the streaming variant (module docstring), not in the original
  upsample: str = "transposed"  # or "resize" (see `Decoder`), not in the original

  def setup(self):
    self.encoder = Encoder(self.encoder_channels, self.strides, self.hidden_dim, self.causal)
    self.quantizer = ResidualVQ(self.hidden_dim, self.codebook_size, self.num_quantizers,
                                self.straight_through, self.codebook_dim)
    self.decoder = Decoder(self.decoder_channels, tuple(reversed(self.strides)), self.causal,
                           self.upsample)

  def __call__(self, audio: jax.Array, train: bool = False,
               levels: jax.Array | None = None) -> dict[str, Any]:
    """Encode → quantize → decode. `audio` `[B, T]`; `levels` as for `ResidualVQ`.

    Returns the quantizer's outputs plus `latent` `[B, frames, D]` and `audio` `[B, T]`, the
    reconstruction trimmed, or zero-padded at the end, to the input length.
    """
    length = audio.shape[-1]
    latent = self._encode(audio)
    out = self.quantizer(latent, train=train, levels=levels)
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

  def stream_encode(self, audio: jax.Array) -> jax.Array:
    """Causal codec, one chunk of a stream: `[B, k * hop]` audio → int32 codes `[B, n_q, k]`.

    Reads and updates the collection "stream" (apply with `mutable=["stream"]`; absent, it
    starts as zeros, the start of an utterance). Chunk after chunk, the codes equal `encode` of
    the concatenated audio.
    """
    self._check_causal("stream_encode")
    return self.quantizer(self._encode(audio, stream=True))["codes"]

  def stream_decode(self, codes: jax.Array) -> jax.Array:
    """Causal codec, one chunk of a stream: int codes `[B, n_q, k]` → audio `[B, k * hop]`.

    The state as for `stream_encode`; chunk after chunk, the audio equals `decode`'s.
    """
    self._check_causal("stream_decode")
    return self._decode(self.quantizer.lookup(codes), stream=True)

  def _check_causal(self, method: str) -> None:
    if not self.causal:
      raise ValueError(f"Codec.{method} needs a causal codec (causal=True); this one pads "
                       f"symmetrically and normalises over the whole utterance")

  def _encode(self, audio: jax.Array, lengths: jax.Array | None = None,
              stream: bool = False) -> jax.Array:
    return self.encoder(audio[..., None].astype(self.dtype), lengths,
                        stream).astype(jnp.float32)

  def _decode(self, quantized: jax.Array, lengths: jax.Array | None = None,
              stream: bool = False) -> jax.Array:
    return self.decoder(quantized.astype(self.dtype), lengths,
                        stream)[..., 0].astype(jnp.float32)
