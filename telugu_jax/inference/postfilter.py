"""Post-filters for decoded speech: sharpen each frame's formants, and its harmonics.

Speech codecs have long put an adaptive post-filter `A(z/g1) / A(z/g2)` (0 < g1 < g2 < 1) after
their decoder, where `1/A(z)` is the frame's LPC envelope: it deepens the valleys between
formants, which coarse quantisation fills in. Its log magnitude is the envelope's cepstrum
weighted by `g2**n - g1**n`. `formant_postfilter` applies those weights to the real cepstrum of
each STFT frame's log magnitude instead of an LPC model's, leaving out quefrency 0 (the level)
and 1 (the spectral tilt), and keeps each frame's phase and energy. A mel-trained decoder blurs
the envelope the same way (README: "A formant post-filter at decode").

Those codecs also put a long-term (pitch) post-filter before it, a comb filter at the pitch
period that raises the harmonics of voiced speech above the noise between them.
`pitch_postfilter` is its symmetric, zero-phase form, with the lag and gain of every 10 ms frame
from the frame's normalised autocorrelation, cross-faded between frames.

`postfilter(wave, "pitch,formant")` runs the named ones in that order; `StreamPostfilter` gives
the same result for audio that arrives in chunks (the voice agent's answers), after a lookahead
of 32 ms (formant), 20 ms (pitch) or 52 ms (both).
"""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import librosa
import numpy as np

N_FFT = 512
HOP = 128
PITCH_HOP = 160  # samples at 16 kHz: 10 ms frames of pitch analysis, 20 ms windows
MIN_PITCH_HZ, MAX_PITCH_HZ = 60.0, 400.0
NAMES = ("pitch", "formant")  # the post-filters, in the order `postfilter` runs them


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


def pitch_postfilter(wave: np.ndarray, strength: float = 1.0, voicing: float = 0.6,
                     sample_rate: int = 16000, min_hz: float = MIN_PITCH_HZ,
                     max_hz: float = MAX_PITCH_HZ) -> np.ndarray:
  """Returns `wave` (`[T]` or `[B, T]`) with the harmonics of its voiced frames emphasised.

  Each frame is filtered by `y[n] = (x[n] + g/2 (x[n-T] + x[n+T])) / (1 + g)`, where `T` is the
  lag in `[sample_rate / max_hz, sample_rate / min_hz]` of the frame's highest normalised
  autocorrelation `r`, and `g = strength * r` (0 where `r < voicing`). A signal of period `T`
  passes unchanged; white noise keeps `(1 + g**2/2) / (1 + g)**2` of its power (-4.3 dB at
  `g = 1`). Taps beyond either end of the audio are left out of the sum and its divisor.

  Args:
    wave: decoded audio.
    strength: the gain of a perfectly periodic frame (0 returns the input; 1, the default and
      the strongest, measured best on decoded speech: README "Post-filters at decode").
    voicing: the normalised autocorrelation under which a frame is left as it is.
    sample_rate: the audio's rate in Hz; the frames are 10 ms.
    min_hz, max_hz: the range of fundamental frequencies searched.
  """
  if not 0 <= strength <= 1:
    raise ValueError(f"strength must lie in [0, 1], got {strength}")
  if not 0 < voicing < 1:
    raise ValueError(f"voicing must lie in (0, 1), got {voicing}")
  if not 0 < min_hz < max_hz:
    raise ValueError(f"need 0 < min_hz < max_hz, got {min_hz}, {max_hz}")
  wave = np.asarray(wave, np.float32)
  if wave.ndim == 2:
    return np.stack([pitch_postfilter(row, strength, voicing, sample_rate, min_hz, max_hz)
                     for row in wave])
  hop = round(PITCH_HOP * sample_rate / 16000)
  min_lag, max_lag = int(sample_rate / max_hz), int(np.ceil(sample_rate / min_hz))
  if wave.size <= min_lag or strength == 0:
    return wave.copy()
  lags, gains = _pitch_lags_and_gains(wave.astype(np.float64), hop, min_lag, max_lag, voicing)
  return _symmetric_comb(wave.astype(np.float64), lags, strength * gains, hop).astype(np.float32)


def _pitch_lags_and_gains(wave: np.ndarray, hop: int, min_lag: int, max_lag: int,
                          voicing: float) -> tuple[np.ndarray, np.ndarray]:
  """The lag of highest normalised autocorrelation `r` of every frame `f` (the window
  `[(f - 1) hop, (f + 1) hop)`, zeros outside the audio), and `r`, or 0 where it is under
  `voicing`."""
  window = 2 * hop
  num_frames = -(-wave.size // hop) + 1
  offset = max_lag + hop  # frame f's window starts at f * hop + max_lag in `padded`
  padded = np.pad(wave, (offset, num_frames * hop + window))
  starts = np.arange(num_frames) * hop + max_lag
  current = np.lib.stride_tricks.sliding_window_view(padded, window)[starts]
  history = np.lib.stride_tricks.sliding_window_view(padded, window + max_lag)[starts - max_lag]
  size = 1 << int(np.ceil(np.log2(window + max_lag)))
  # correlation[:, k] = sum_i current[i] history[i + k]: the lag max_lag - k.
  correlation = np.fft.irfft(np.fft.rfft(history, size) * np.conj(np.fft.rfft(current, size)),
                             size)[:, max_lag - min_lag::-1]
  cumulative = np.concatenate([[0.0], np.cumsum(padded ** 2)])
  lag_range = np.arange(min_lag, max_lag + 1)
  lagged_start = starts[:, None] - lag_range
  lagged_energy = cumulative[lagged_start + window] - cumulative[lagged_start]
  energy = (cumulative[starts + window] - cumulative[starts])[:, None]
  scale = np.sqrt(energy * lagged_energy)
  r = np.where(scale > 1e-12, correlation / np.maximum(scale, 1e-30), 0.0)
  best = np.argmax(r, axis=1)
  peak = np.clip(r[np.arange(num_frames), best], 0.0, 1.0)
  return lag_range[best], np.where(peak >= voicing, peak, 0.0)


def _symmetric_comb(wave: np.ndarray, lags: np.ndarray, gains: np.ndarray,
                    hop: int) -> np.ndarray:
  """Each frame's comb `(x[n] + g/2 (x[n-T] + x[n+T])) / (1 + g)` (taps outside the audio left
  out), cross-faded between frames by periodic Hann windows of `2 hop` that sum to one."""
  n = np.arange(wave.size)
  phase = n % hop
  fade_in = 0.5 - 0.5 * np.cos(np.pi * phase / hop)  # frame n // hop + 1's rising half
  out = np.zeros_like(wave)
  for frame, weight in ((n // hop, 1.0 - fade_in), (n // hop + 1, fade_in)):
    lag, half_gain = lags[frame], 0.5 * gains[frame]
    back, forward = n - lag, n + lag
    has_back, has_forward = back >= 0, forward < wave.size
    taps = (np.where(has_back, wave[np.clip(back, 0, None)], 0.0)
            + np.where(has_forward, wave[np.clip(forward, None, wave.size - 1)], 0.0))
    taps_used = has_back.astype(np.float64) + has_forward
    out += weight * (wave + half_gain * taps) / (1.0 + half_gain * taps_used)
  return out


def parse_names(spec: str | Sequence[str]) -> tuple[str, ...]:
  """`"formant"`, `"pitch,formant"`, ... (or a sequence of names) → the names in `NAMES` order."""
  names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
  unknown = sorted(set(names) - set(NAMES))
  if unknown or not names:
    raise ValueError(f"post-filters are {', '.join(NAMES)} (comma-separated); got {spec!r}")
  return tuple(n for n in NAMES if n in names)


def flag(spec: str) -> str:
  """argparse `type=` of the tools' `--postfilter` flags: "" (none), or the names in `NAMES`
  order, comma-separated; anything else is a usage error naming the post-filters."""
  if not spec:
    return ""
  try:
    return ",".join(parse_names(spec))
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def postfilter(wave: np.ndarray, names: str | Sequence[str] = NAMES) -> np.ndarray:
  """`wave` through the named post-filters, each with its defaults, pitch before formant (as
  classic codecs run them)."""
  for name in parse_names(names):
    wave = pitch_postfilter(wave) if name == "pitch" else formant_postfilter(wave)
  return wave


class StreamPostfilter:
  """`postfilter` for audio that arrives in chunks (16 kHz, batch 1), exactly.

  Each output sample depends on the input within `latency_samples` after it and a bounded span
  before it (both filters work on frames on a fixed grid), so every push runs `postfilter` on a
  short trailing window of the utterance, starting on that grid, and emits the samples whose
  inputs have all arrived: pushing an utterance in any chunks, then flushing, gives `postfilter`
  of the whole utterance.
  """

  def __init__(self, names: str | Sequence[str] = NAMES):
    self.names = parse_names(names)
    # The input an output sample depends on, after it and before it, per filter: the pitch
    # filter's two analysis frames and its comb taps; the formant filter's STFT frames.
    max_lag = math.ceil(16000 / MIN_PITCH_HZ)
    spans = {"pitch": (max(2 * PITCH_HOP, max_lag), 2 * PITCH_HOP + max_lag),
             "formant": (N_FFT, N_FFT)}
    self.latency_samples = sum(spans[n][0] for n in self.names)
    self._history = sum(spans[n][1] for n in self.names)
    self._grid = math.lcm(HOP, PITCH_HOP)
    self.reset()

  def reset(self) -> None:
    """Forgets the utterance: the next push starts a new one."""
    self._buffer = np.zeros(0, np.float32)  # the utterance from sample self._start on
    self._start = 0  # on the frame grid
    self._emitted = 0

  def push(self, samples: np.ndarray) -> np.ndarray:
    """float32 `[n]` (any n >= 0) → the filtered samples ready so far (`latency_samples` fewer
    than pushed in all, until `flush`)."""
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 1:
      raise ValueError(f"StreamPostfilter.push: expected samples of shape [n], got {samples.shape}")
    self._buffer = np.concatenate([self._buffer, samples])
    ready = self._start + self._buffer.size - self.latency_samples
    if ready <= self._emitted:
      return np.zeros(0, np.float32)
    out = postfilter(self._buffer, self.names)[self._emitted - self._start:ready - self._start]
    self._emitted = ready
    start = max(0, (ready - self._history) // self._grid * self._grid)
    self._buffer = self._buffer[start - self._start:]
    self._start = start
    return out

  def flush(self) -> np.ndarray:
    """The samples still held back; then starts anew."""
    out = postfilter(self._buffer, self.names)[self._emitted - self._start:]
    self.reset()
    return out
