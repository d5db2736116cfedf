"""Losses: the codec GAN's (hinge adversarial, feature matching, L1, residual-VQ, multi-scale
mel), the S2S model's masked cross-entropy over code levels and its auxiliary CTC on transcripts.

All reduce to float32 scalars. The discriminator outputs are `(logits, features)` as returned by
`telugu_jax.models.discriminators.Discriminator`: 8 logits and 8 lists of feature maps.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from telugu_jax.models.layers import stft

VQ_COMMITMENT = 0.25
GENERATOR_TERMS = ("adversarial", "feature_matching", "l1", "vq")
ORIGINAL_GENERATOR_WEIGHTS = {"adversarial": 1.0, "feature_matching": 10.0, "l1": 0.1, "vq": 1.0}


def _mean(values: Sequence[jax.Array]) -> jax.Array:
  return sum(values) / len(values)


def discriminator_hinge(real_logits: Sequence[jax.Array],
                        fake_logits: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """`(real, fake)` hinge terms, each averaged over discriminators; the loss is their sum."""
  real = _mean([jnp.mean(jax.nn.relu(1.0 - d)) for d in real_logits])
  fake = _mean([jnp.mean(jax.nn.relu(1.0 + d)) for d in fake_logits])
  return real, fake


def generator_adversarial(fake_logits: Sequence[jax.Array]) -> jax.Array:
  """The generator's hinge term `mean_d mean(relu(1 - D(x_hat)))`."""
  return _mean([jnp.mean(jax.nn.relu(1.0 - d)) for d in fake_logits])


def feature_matching(real_features: Sequence[Sequence[jax.Array]],
                     fake_features: Sequence[Sequence[jax.Array]]) -> jax.Array:
  """L1 between real and fake feature maps, averaged over every (discriminator, layer) pair.

  The real features are not stopped here: the original does not detach them (they carry no
  codec gradient either way).
  """
  return _mean([l1(fake, real) for reals, fakes in zip(real_features, fake_features)
                for real, fake in zip(reals, fakes)])


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x - y))


def vq_loss(residuals: jax.Array, codewords: jax.Array,
            level_mask: jax.Array | None = None) -> jax.Array:
  """The original's residual-VQ loss, averaged over levels.

  Per level: `mse(codeword, sg(residual)) + 0.25 * mse(residual, sg(codeword))`: the first term
  pulls the codebook rows, the second commits the encoder.

  Args:
    residuals: `[n_q, B, ..., D]` each level's input (`ResidualVQ` output "residuals").
    codewords: `[n_q, B, ..., D]` the codebook rows it chose ("codewords").
    level_mask: optional `[n_q, B]` (quantizer dropout): dropped (level, example) pairs add zero
      to the mean, as in DAC; None: the original.
  """
  sg = jax.lax.stop_gradient
  axes = tuple(range(1, residuals.ndim))
  codebook = (codewords - sg(residuals)) ** 2
  commitment = (residuals - sg(codewords)) ** 2
  if level_mask is not None:
    keep = level_mask.reshape(level_mask.shape + (1,) * (residuals.ndim - 2))
    codebook, commitment = codebook * keep, commitment * keep
  return jnp.mean(jnp.mean(codebook, axis=axes) + VQ_COMMITMENT * jnp.mean(commitment, axis=axes))


@functools.lru_cache(maxsize=None)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  import librosa  # Imported lazily: only the mel loss needs it.
  return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T.astype(np.float32)


def multiscale_mel(x: jax.Array, y: jax.Array, sample_rate: int = 16000,
                   n_ffts: Sequence[int] = (2048, 1024, 512, 256, 128),
                   n_mels: Sequence[int] = (128, 80, 64, 32, 16),
                   floor: float = 1e-5, lengths: jax.Array | None = None) -> jax.Array:
  """Mean over scales of L1 between log10 mel magnitudes of `x` and `y` (`[B, T]`).

  Not in the original (whose final objective has no spectral term, defect 5); weight 0 on the
  faithful path. Each scale uses a Hann window of `n_fft` and hop `n_fft // 4`. With `lengths`
  (`[B]` samples), each scale's L1 is averaged over each clip's own `1 + length // hop` frames
  only, the frames the clip would have alone: frames of padding, equal in both when it is
  zeroed, would otherwise pull the distance towards 0 by the padding's share.
  """
  losses = []
  for n_fft, mels in zip(n_ffts, n_mels):
    hop = n_fft // 4
    basis = _mel_basis(sample_rate, n_fft, mels)
    log_mel = lambda s: jnp.log10(jnp.maximum(jnp.abs(stft(s, n_fft, hop)) @ basis, floor))
    if lengths is None:
      losses.append(l1(log_mel(x), log_mel(y)))
      continue
    per_frame = jnp.mean(jnp.abs(log_mel(x) - log_mel(y)), axis=-1)  # [B, frames]
    inside = jnp.arange(per_frame.shape[1])[None, :] < 1 + lengths[:, None] // hop
    losses.append(jnp.sum(per_frame * inside) / jnp.maximum(jnp.sum(inside), 1))
  return _mean(losses)


WAVEFORM_TERMS = ("si_sdr", "snr")


def negative_waveform_db(name: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """Minus the mean over the batch of `x`'s SI-SDR (`name="si_sdr"`) or SNR (`"snr"`) in dB
  against the reference `y` (`[B, T]`; `evaluation.metrics`). Not in the original: waveform
  terms that, unlike L1, reward matching the phase even while the output is still uncorrelated
  with the input. SI-SDR ignores the output's level; SNR also teaches it."""
  from telugu_jax.evaluation import metrics  # metrics imports this module
  lengths = jnp.full((y.shape[0],), y.shape[-1], jnp.int32)
  per_clip = {"si_sdr": metrics.si_sdr_db, "snr": metrics.snr_db}[name]
  return -jnp.mean(per_clip(y, x, lengths))


def discriminator_losses(real: tuple, fake: tuple) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The discriminator objective from its `(logits, features)` on real and generated audio."""
  real_term, fake_term = discriminator_hinge(real[0], fake[0])
  return real_term + fake_term, {"disc_real": real_term, "disc_fake": fake_term}


def generator_losses(audio: jax.Array, codec_out: dict, real: tuple, fake: tuple,
                     weights: dict[str, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The codec's objective: a weighted sum of its terms.

  Args:
    audio: `[B, T]` the real audio.
    codec_out: the codec's training forward (`audio`, `residuals`, `codewords`).
    real, fake: the discriminator's `(logits, features)` on `audio` and on `codec_out["audio"]`;
      both None without a discriminator (the adversarial and feature-matching terms are then 0).
    weights: `adversarial`, `feature_matching`, `l1`, `vq`, and optionally `mel`, `si_sdr` and
      `snr` (computed only when their weight is non-zero). The original's are 1, 10, 0.1, 1
      and 0 for the optional ones.
  Returns:
    `(total, terms)`.
  """
  optional = {"mel", *WAVEFORM_TERMS}
  if set(weights) - optional != set(GENERATOR_TERMS):
    raise ValueError(f"generator loss weights must name {list(GENERATOR_TERMS)} (and optionally "
                     f"{sorted(optional)}), got {sorted(weights)}")
  no_disc = jnp.zeros((), jnp.float32)
  terms = {
      "adversarial": no_disc if fake is None else generator_adversarial(fake[0]),
      "feature_matching": no_disc if fake is None else feature_matching(real[1], fake[1]),
      "l1": l1(codec_out["audio"], audio),
      "vq": vq_loss(codec_out["residuals"], codec_out["codewords"], codec_out.get("level_mask")),
  }
  if weights.get("mel", 0.0):
    terms["mel"] = multiscale_mel(codec_out["audio"], audio)
  for name in WAVEFORM_TERMS:
    if weights.get(name, 0.0):
      terms[name] = negative_waveform_db(name, codec_out["audio"], audio)
  total = sum(weights[name] * value for name, value in terms.items())
  return total, terms


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                         label_smoothing: float = 0.0,
                         level_weights: Sequence[float] | None = None,
                         position_weights: jax.Array | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of code logits over the positions that count.

  Per level q: the mean over positions with `weights > 0` of
  `(1 - s) * -log p(target) + s * mean_v(-log p(v))` (s = `label_smoothing`), weighted by
  `position_weights` where given; the loss is the
  `level_weights`-weighted mean of the per-level values (uniform weights and all positions
  counting give the original's mean over levels of `F.cross_entropy`).

  Args:
    logits: `[B, Q, T, V]`.
    targets: int `[B, Q, T]`.
    weights: `[B, Q, T]`, 1.0 where the target counts (`teacher_forcing(...).weights`).
    label_smoothing: s above.
    level_weights: `Q` non-negative weights (None: uniform).
    position_weights: broadcastable to `[B, Q, T]`, positive: each counted position's weight in
      its level's mean (None: all 1). The returned sums do not use them.
  Returns:
    `(loss, sums)`: sums per level `[Q]` for aggregation over batches: `nll` (unsmoothed
    negative log-likelihood), `correct` (top-1 hits) and `count` (positions counted).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  # The target's log-probability through a one-hot select rather than a gather: the same values,
  # and an elementwise gradient in place of a scatter (slow on CPU).
  classes = jnp.arange(logits.shape[-1])
  hit = classes == targets[..., None]
  nll = -jnp.sum(jnp.where(hit, log_probs, 0.0), axis=-1)
  per_position = nll
  if label_smoothing:
    per_position = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, -1)
  count = jnp.sum(weights, axis=(0, 2))  # [Q]
  loss_weights = weights if position_weights is None else weights * position_weights
  level_loss = (jnp.sum(per_position * loss_weights, axis=(0, 2))
                / jnp.maximum(jnp.sum(loss_weights, axis=(0, 2)), 1e-6))
  q = logits.shape[1]
  level_weights = jnp.ones(q) if level_weights is None else jnp.asarray(level_weights, jnp.float32)
  if level_weights.shape != (q,):
    raise ValueError(f"level_weights needs {q} entries, got {level_weights.shape[0]}")
  loss = jnp.sum(level_weights * level_loss) / jnp.sum(level_weights)
  # Top-1 hits, `argmax(logits) == targets`: the first class holding the maximum (NaN counting as
  # the maximum, as in argmax), found by a plain minimum instead of argmax's two-operand reduction.
  is_max = (logits == jnp.max(logits, axis=-1, keepdims=True)) | jnp.isnan(logits)
  first_max = jnp.min(jnp.where(is_max, classes, logits.shape[-1]), axis=-1)
  correct = (first_max == targets).astype(jnp.float32)
  return loss, {"nll": jnp.sum(nll * weights, axis=(0, 2)),
                "correct": jnp.sum(correct * weights, axis=(0, 2)), "count": count}


def transcript_ctc(logits: jax.Array, frame_lengths: jax.Array, labels: jax.Array,
                   label_lengths: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CTC of per-frame character logits against transcripts (blank id 0), per character.

  Args:
    logits: `[B, T, C]`; frames at or past `frame_lengths [B]` are padding.
    labels: int `[B, N]`; `label_lengths [B]` of them count; rows with 0 (no transcript) are
      left out.
  Returns:
    `(loss, sums)`: the loss is the summed negative log-likelihood of the rows with a transcript
    over their summed lengths (nats per character; 0 when no row has one); `sums` holds `nll`
    and `characters` for aggregation over batches.
  """
  frames = jnp.arange(logits.shape[1])[None, :]
  logit_paddings = (frames >= frame_lengths[:, None]).astype(jnp.float32)
  label_paddings = (jnp.arange(labels.shape[1])[None, :] >= label_lengths[:, None]).astype(
      jnp.float32)
  per_row = optax.ctc_loss(logits.astype(jnp.float32), logit_paddings, labels, label_paddings)
  has_text = label_lengths > 0
  nll = jnp.sum(jnp.where(has_text, per_row, 0.0))
  characters = jnp.sum(jnp.where(has_text, label_lengths, 0)).astype(jnp.float32)
  return nll / jnp.maximum(characters, 1.0), {"nll": nll, "characters": characters}
