"""Audio decoding, resampling and the original system's level normalisation.

Everything here is plain numpy (no JAX), so it runs in grain worker processes and in the shard
builder's worker pool without touching an accelerator.

Decoding goes through libsndfile (`soundfile`: WAV, FLAC, OGG/Vorbis/Opus and, since
libsndfile 1.1, MP3). Containers libsndfile cannot read (M4A/AAC as Kathbath ships it, for
example) fall back to `audioread`, which needs `ffmpeg` (or GStreamer) on the system.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import BinaryIO, Union

import audioread
import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000
"""Sample rate of everything the codec and the pipelines see."""

TARGET_RMS = 0.158
"""RMS of a normalised crop (-16 dBFS), as in the original `train_codec_dac.py`."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
"""File extensions that the shard builder and the folder readers pick up."""

_LIBSNDFILE_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")

CLIP_THRESHOLD = 0.999
"""|sample| at or above this (in [-1, 1] full scale) counts as clipped in level statistics."""

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]


class AudioDecodeError(ValueError):
  """A file (or byte string) that holds no usable audio: corrupt, empty or unreadable.

  The message always names the file and the problem, e.g. ``"clips/a.wav: empty file (0
  bytes)"`` or ``"clips/b.wav: cannot decode audio: Error opening ...: Format not
  recognised."``.
  """


def _display_name(source: AudioSource, name: str | None) -> str:
  if name is not None:
    return name
  if isinstance(source, (str, os.PathLike)):
    return os.fspath(source)
  return "<in-memory audio>"


def _read_with_audioread(path: str) -> tuple[np.ndarray, int]:
  """Decodes through audioread (ffmpeg/GStreamer backends); returns `[T, C]` float32 and rate."""
  with audioread.audio_open(path) as f:
    channels, rate = f.channels, f.samplerate
    chunks = [np.frombuffer(buf, dtype="<i2") for buf in f]
  pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
  frames = pcm.size // max(channels, 1)
  pcm = pcm[: frames * channels].reshape(frames, channels)
  return pcm.astype(np.float32) / 32768.0, int(rate)


def read_audio(source: AudioSource, *, name: str | None = None) -> tuple[np.ndarray, int]:
  """Decodes audio at its own sample rate, keeping every channel.

  Args:
    source: a path, the file's bytes, or a binary file object.
    name: how to name the audio in error messages (defaults to the path).

  Returns:
    `(samples, sample_rate)` with `samples` float32 `[frames, channels]` in [-1, 1].

  Raises:
    AudioDecodeError: the source is missing, unreadable, corrupt, empty (no samples) or holds
      non-finite samples.
  """
  label = _display_name(source, name)
  if isinstance(source, (str, os.PathLike)):
    if not os.path.isfile(source):
      raise AudioDecodeError(f"{label}: file not found")
    if os.path.getsize(source) == 0:
      raise AudioDecodeError(f"{label}: empty file (0 bytes)")
  elif isinstance(source, bytes) and not source:
    raise AudioDecodeError(f"{label}: empty (0 bytes)")
  data_source = io.BytesIO(source) if isinstance(source, bytes) else source
  try:
    samples, rate = soundfile.read(data_source, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, TypeError) as sf_error:
    samples, rate = _decode_fallback(source, label, sf_error)
  if samples.shape[0] == 0 or samples.shape[1] == 0:
    raise AudioDecodeError(f"{label}: contains no audio samples")
  if not np.all(np.isfinite(samples)):
    raise AudioDecodeError(f"{label}: contains NaN or infinite samples")
  return samples, int(rate)


def _decode_fallback(
    source: AudioSource, label: str, sf_error: Exception
) -> tuple[np.ndarray, int]:
  """Second chance for formats libsndfile rejects; re-raises as AudioDecodeError."""
  try:
    if isinstance(source, (str, os.PathLike)):
      return _read_with_audioread(os.fspath(source))
    if not isinstance(source, bytes) and source.seekable():
      source.seek(0)
    data = source if isinstance(source, bytes) else source.read()
    suffix = os.path.splitext(label)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
      tmp.write(data)
      tmp.flush()
      return _read_with_audioread(tmp.name)
  except audioread.NoBackendError as e:
    hint = ""
    file_name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else label
    if not file_name.lower().endswith(_LIBSNDFILE_EXTENSIONS):
      hint = " (formats other than WAV/FLAC/OGG/MP3 need ffmpeg installed)"
    raise AudioDecodeError(f"{label}: cannot decode audio: {sf_error}{hint}") from e
  except Exception as e:  # audioread backends raise many unrelated types.
    raise AudioDecodeError(
        f"{label}: cannot decode audio: {sf_error}; ffmpeg: {type(e).__name__}: {e}"
    ) from e


def to_mono(samples: np.ndarray) -> np.ndarray:
  """Folds `[frames, channels]` to `[frames]` by the channel mean (the original's rule)."""
  samples = np.asarray(samples, np.float32)
  if samples.ndim == 1:
    return samples
  return samples.mean(axis=1, dtype=np.float32)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Resamples a mono float wave with soxr (high quality); a no-op at equal rates."""
  wave = np.asarray(wave, np.float32)
  if orig_rate == target_rate:
    return wave
  return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32)


def load_audio(
    path: AudioSource, sample_rate: int = SAMPLE_RATE, *, name: str | None = None
) -> np.ndarray:
  """Loads any WAV/FLAC/MP3/OGG (or, with ffmpeg, M4A) file as mono float32 at `sample_rate`.

  Args:
    path: a path, the file's bytes or a binary file object.
    sample_rate: the output rate in Hz.
    name: how to name the audio in error messages (defaults to the path).

  Returns:
    float32 `[T]` in [-1, 1] (resampling may overshoot full scale by a little).

  Raises:
    AudioDecodeError: corrupt, empty, missing or unreadable audio; the message names the file.
  """
  samples, rate = read_audio(path, name=name)
  return resample(to_mono(samples), rate, sample_rate)


def level_gains(
    wave: np.ndarray,
    target_rms: float = TARGET_RMS,
    *,
    silence_rms: float = 1e-8,
    peak_limit: float = 1.0,
    peak_target: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
  """The two float32 gains `[..., 1]` of `normalize_rms` (RMS, then peak), applied in that
  order: `normalize_rms(w) == w * rms_gain * peak_gain`. A stream that cannot see the whole
  utterance applies the gains of its beginning to the rest."""
  wave = np.asarray(wave, np.float32)
  rms = np.sqrt(np.mean(np.square(wave, dtype=np.float64), axis=-1, keepdims=True))
  gain = np.where(rms > silence_rms, target_rms / np.maximum(rms, silence_rms), 1.0)
  gain = gain.astype(np.float32)
  peak = np.max(np.abs(wave * gain), axis=-1, keepdims=True).astype(np.float64)
  peak_gain = np.where(peak > peak_limit, peak_target / np.maximum(peak, 1e-30), 1.0)
  return gain, peak_gain.astype(np.float32)


def normalize_rms(
    wave: np.ndarray,
    target_rms: float = TARGET_RMS,
    *,
    silence_rms: float = 1e-8,
    peak_limit: float = 1.0,
    peak_target: float = 0.95,
) -> np.ndarray:
  """The original's level rule: scale to `target_rms`, then tame peaks above `peak_limit`.

  If `rms(wave) > silence_rms` the wave is scaled to RMS `target_rms` (0.158, -16 dBFS); if
  the peak then exceeds `peak_limit` (1.0) the wave is rescaled so its peak is `peak_target`
  (0.95). Silent input is returned unchanged.

  Args:
    wave: float `[..., T]`; statistics are taken over the last axis.
    target_rms: RMS after scaling.
    silence_rms: at or below this RMS the wave is left alone.
    peak_limit: peak above which the second rescale applies.
    peak_target: the peak after that rescale.

  Returns:
    float32 array of the same shape.
  """
  wave = np.asarray(wave, np.float32)
  gain, peak_gain = level_gains(wave, target_rms, silence_rms=silence_rms,
                                peak_limit=peak_limit, peak_target=peak_target)
  return (wave * gain * peak_gain).astype(np.float32)


def crop_or_pad(wave: np.ndarray, length: int, start: int = 0) -> np.ndarray:
  """Takes `wave[start:start+length]`, zero-padding at the end when the wave is shorter."""
  wave = np.asarray(wave, np.float32)
  out = wave[start : start + length]
  if out.shape[0] < length:
    out = np.pad(out, (0, length - out.shape[0]))
  return out


def random_start(size: int, length: int, rng: np.random.Generator) -> int:
  """The start of a uniformly random `length`-sample window of `size` samples (0 if shorter)."""
  slack = size - length
  return int(rng.integers(0, slack + 1)) if slack > 0 else 0


def float_to_pcm16(wave: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> int16, clipping overshoot (e.g. from resampling) to full scale."""
  scaled = np.round(np.asarray(wave, np.float64) * 32768.0)
  return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
  """int16 -> float32 in [-1, 1)."""
  return np.asarray(pcm, np.int16).astype(np.float32) / 32768.0


def level_stats(samples: np.ndarray) -> dict[str, float]:
  """Level and clipping statistics of a recording, for the data report.

  Args:
    samples: float `[frames]` or `[frames, channels]` at the recording's own rate.

  Returns:
    `rms_dbfs` (of the mono fold; -inf for digital silence), `peak` (max |sample| over all
    channels) and `clipped_fraction` (share of samples with |x| >= CLIP_THRESHOLD).
  """
  samples = np.asarray(samples, np.float32)
  mono = to_mono(samples) if samples.ndim == 2 else samples
  rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
  magnitude = np.abs(samples)
  return {
      "rms_dbfs": 20.0 * np.log10(rms) if rms > 0 else float("-inf"),
      "peak": float(magnitude.max()),
      "clipped_fraction": float(np.mean(magnitude >= CLIP_THRESHOLD)),
  }


def bucket_length(length: int, unit: int, per_octave: int = 2) -> int:
  """The smallest bucket holding `length`: `per_octave` evenly spaced sizes in each doubling,
  `unit * (1, 1.5, 2, 3, 4, 6, ...)` for 2, `unit * (1, 1.25, 1.5, 1.75, 2, 2.5, ...)` for 4
  (the padding is at most 1/2 or 1/4 of the length, ~22% or ~9% on average)."""
  if per_octave < 1:
    raise ValueError(f"per_octave must be at least 1, got {per_octave}")
  k = 0
  while True:
    for step in range(per_octave):
      size = ((per_octave + step) * unit << k) // per_octave
      if size >= length:
        return size
    k += 1
