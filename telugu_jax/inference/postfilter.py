"""A formant post-filter for decoded speech: sharpens each frame's spectral envelope.

Speech codecs have long put an adaptive post-filter `A(z/g1) / A(z/g2)` (0 < g1 < g2 < 1) after
their decoder, where `1/A(z)` is the frame's LPC envelope: it deepens the valleys between
formants, which coarse quantisation fills in. Its log magnitude is the envelope's cepstrum
weighted by `g2**n - g1**n`. `formant_postfilter` applies those weights to the real cepstrum of
each STFT frame's log magnitude instead of an LPC model's, leaving out quefrency 0 (the level)
and 1 (the spectral tilt), and keeps each frame's phase and energy. A mel-trained decoder blurs
the envelope the same way (README: "A formant post-filter at decode").
"""

from __future__ import annotations

import librosa
import numpy as np

N_FFT = 512
HOP = 128


def formant_postfilter(wave: np.ndarray, numerator: float = 0.6, denominator: float = 0.95,
                       quefrencies: int = 60) -> np.ndarray:
  """Returns `wave` (`[T]` or `[B, T]`, 16 kHz) with every frame's formants sharpened.

  Audio shorter than one frame (512 samples) is returned unchanged.

  Args:
    wave: decoded audio.
    numerator, denominator: `g1`, `g2` of the post-filter `A(z/g1) / A(z/g2)`;
      `numerator == denominator` returns the input (up to the STFT round trip, ~1e-7).
    quefrencies: the cepstral coefficients reshaped (2 ... quefrencies - 1).
  """
  if not 0 <= numerator <= denominator < 1:
    raise ValueError("the post-filter needs 0 <= numerator <= denominator < 1, got "
                     f"{numerator}, {denominator}")
  if not 2 < quefrencies <= N_FFT // 2:
    raise ValueError(f"quefrencies must lie in (2, {N_FFT // 2}], got {quefrencies}")
  wave = np.asarray(wave, np.float32)
  if wave.shape[-1] < N_FFT:
    return wave.copy()
  n = np.arange(quefrencies)
  weights = denominator ** n - numerator ** n
  weights[:2] = 0.0
  lifter = np.zeros(N_FFT)
  lifter[:quefrencies] = weights
  lifter[N_FFT - quefrencies + 1:] = weights[1:][::-1]  # the real cepstrum is symmetric

  spec = librosa.stft(wave, n_fft=N_FFT, hop_length=HOP, window="hann")  # [..., freq, frames]
  power = np.abs(spec) ** 2 + 1e-20
  log_magnitude = 0.5 * np.log(power)
  cepstrum = np.fft.irfft(log_magnitude, n=N_FFT, axis=-2)
  change = np.fft.rfft(cepstrum * lifter[:, None], axis=-2).real
  gain = np.exp(change)
  gain *= np.sqrt(power.sum(-2, keepdims=True) / (power * gain ** 2).sum(-2, keepdims=True))
  out = librosa.istft(spec * gain, hop_length=HOP, window="hann", n_fft=N_FFT,
                      length=wave.shape[-1])
  return out.astype(np.float32)
