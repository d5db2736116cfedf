"""Audio decoding, mono folding, resampling and the original's normalisation rule."""

import csv
import io
import os

import numpy as np
import pytest
import soundfile

from telugu_jax.data import audio
from telugu_jax.data import pipelines

COMMON_VOICE_DEV = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "common-voice-te-dev"
)


# --- normalize_rms against values worked out by hand -------------------------------------------


def test_normalize_scales_to_target_rms():
  # RMS of +-0.5 is 0.5; scaled by 0.158 / 0.5 every sample becomes +-0.158; peak 0.158 <= 1.
  out = audio.normalize_rms(np.array([0.5, -0.5, 0.5, -0.5], np.float32))
  np.testing.assert_allclose(out, [0.158, -0.158, 0.158, -0.158], rtol=1e-6)


def test_normalize_rescales_peak_after_rms_scaling():
  # 99 samples of 0.02 and one of 1.0: mean square = (99 * 0.0004 + 1) / 100 = 0.010396,
  # RMS = 0.1019608; the gain 0.158 / 0.1019608 = 1.549616 lifts the spike to 1.5496 > 1, so
  # the wave is rescaled to peak 0.95: overall gain 0.95 / 1.0 -> 0.019 and 0.95.
  x = np.full(100, 0.02, np.float32)
  x[-1] = 1.0
  out = audio.normalize_rms(x)
  np.testing.assert_allclose(out[:-1], 0.019, rtol=1e-5)
  assert out[-1] == pytest.approx(0.95, rel=1e-6)


def test_normalize_keeps_peak_at_or_below_one_untouched():
  # [1, 0, 0, 0]: RMS 0.5, gain 0.316 -> peak 0.316 <= 1, so no second rescale.
  out = audio.normalize_rms(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
  np.testing.assert_allclose(out, [0.316, 0.0, 0.0, 0.0], rtol=1e-6)


def test_normalize_leaves_silence_alone():
  np.testing.assert_array_equal(audio.normalize_rms(np.zeros(8, np.float32)), np.zeros(8))
  quiet = np.full(8, 1e-9, np.float32)  # RMS 1e-9 <= 1e-8: unchanged
  np.testing.assert_array_equal(audio.normalize_rms(quiet), quiet)


def test_normalize_is_per_row_for_batches():
  rows = np.stack([np.array([0.5, -0.5] * 2, np.float32), np.array([1.0, 0, 0, 0], np.float32)])
  out = audio.normalize_rms(rows)
  np.testing.assert_allclose(out[0], [0.158, -0.158] * 2, rtol=1e-6)
  np.testing.assert_allclose(out[1], [0.316, 0, 0, 0], rtol=1e-6)


# --- decoding, stereo folding, resampling ------------------------------------------------------


def test_stereo_is_folded_by_channel_mean_and_resampled(tmp_path):
  rate, seconds, freq = 44100, 0.5, 440.0
  t = np.arange(int(rate * seconds)) / rate
  left, right = 0.6 * np.sin(2 * np.pi * freq * t), 0.2 * np.sin(2 * np.pi * freq * t)
  path = tmp_path / "stereo.wav"
  soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")

  wave = audio.load_audio(path)
  assert wave.dtype == np.float32
  assert wave.shape == (round(len(t) * 16000 / rate),)
  # The mean of the channels is 0.4 sin(2 pi f t); compare away from the filter's edges.
  expected = 0.4 * np.sin(2 * np.pi * freq * np.arange(wave.shape[0]) / 16000)
  np.testing.assert_allclose(wave[200:-200], expected[200:-200], atol=2e-3)


def test_16k_mono_passes_through_unchanged(tmp_path):
  pcm = (np.random.default_rng(0).uniform(-0.5, 0.5, 1600) * 32768).astype(np.int16)
  path = tmp_path / "mono.flac"
  soundfile.write(path, pcm, 16000)
  np.testing.assert_array_equal(audio.load_audio(path), pcm.astype(np.float32) / 32768)


def test_mp3_and_ogg_decode(tmp_path):
  t = np.arange(32000) / 32000
  tone = 0.3 * np.sin(2 * np.pi * 300 * t)
  for fmt, ext in (("MP3", "mp3"), ("OGG", "ogg")):
    path = tmp_path / f"clip.{ext}"
    soundfile.write(path, tone, 32000, format=fmt)
    wave = audio.load_audio(path)
    assert abs(wave.shape[0] - 16000) < 1200  # lossy codecs add a frame of delay/padding
    assert 0.15 < np.sqrt(np.mean(wave**2)) < 0.26  # a 0.3 sine has RMS 0.212


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("empty.wav", b"", "empty file"),
        ("garbage.flac", b"this is not audio at all", "cannot decode audio"),
        ("truncated.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot decode audio"),
    ],
)
def test_bad_files_raise_a_named_error(tmp_path, name, content, problem):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(audio.AudioDecodeError, match=problem) as info:
    audio.load_audio(path)
  assert name in str(info.value)
  assert isinstance(info.value, ValueError)


def test_zero_samples_and_nan_and_missing_are_errors(tmp_path):
  soundfile.write(tmp_path / "zero.wav", np.zeros((0, 1)), 16000)
  with pytest.raises(audio.AudioDecodeError, match="zero.wav: contains no audio samples"):
    audio.load_audio(tmp_path / "zero.wav")
  soundfile.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2]), 16000, subtype="FLOAT")
  with pytest.raises(audio.AudioDecodeError, match="nan.wav: contains NaN"):
    audio.load_audio(tmp_path / "nan.wav")
  with pytest.raises(audio.AudioDecodeError, match="missing.wav: file not found"):
    audio.load_audio(tmp_path / "missing.wav")


def test_bytes_input_and_pcm_round_trip():
  buffer = io.BytesIO()
  soundfile.write(buffer, np.array([0.25, -0.5, 0.0]), 8000, format="WAV", subtype="PCM_16")
  wave = audio.load_audio(buffer.getvalue(), 8000)
  np.testing.assert_array_equal(wave, [0.25, -0.5, 0.0])
  pcm = audio.float_to_pcm16(np.array([1.5, -1.5, 0.5], np.float32))  # overshoot is clipped
  np.testing.assert_array_equal(pcm, [32767, -32768, 16384])
  np.testing.assert_array_equal(audio.pcm16_to_float(pcm), [32767 / 32768, -1.0, 0.5])


def test_crop_or_pad_and_level_stats():
  np.testing.assert_array_equal(audio.crop_or_pad(np.arange(3.0), 5), [0, 1, 2, 0, 0])
  np.testing.assert_array_equal(audio.crop_or_pad(np.arange(6.0), 3, start=2), [2, 3, 4])
  stats = audio.level_stats(np.array([[1.0, 0.5], [-0.5, -0.5]], np.float32))
  # mono fold [0.75, -0.5]: RMS sqrt((0.5625 + 0.25) / 2) = 0.6374 -> -3.912 dBFS
  assert stats["rms_dbfs"] == pytest.approx(20 * np.log10(np.sqrt(0.8125 / 2)), abs=1e-4)
  assert stats["peak"] == 1.0 and stats["clipped_fraction"] == 0.25


@pytest.mark.skipif(not os.path.isdir(COMMON_VOICE_DEV), reason="shared Common Voice clips absent")
def test_folder_eval_clips_reads_real_common_voice_mp3():
  with open(os.path.join(COMMON_VOICE_DEV, "manifest.tsv"), encoding="utf-8") as f:
    manifest = {row["file"]: float(row["duration_s"]) for row in csv.DictReader(f, delimiter="\t")}
  clips = pipelines.folder_eval_clips(COMMON_VOICE_DEV)
  assert [name for name, _ in clips] == sorted(manifest)
  for name, wave in clips:
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.shape[0] / 16000 - manifest[name]) < 0.1
    assert 0.005 < np.sqrt(np.mean(wave**2)) < 0.5
