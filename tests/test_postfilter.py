"""The post-filters of `inference/postfilter.py`: the formant one against the response of the
classic `A(z/g1) / A(z/g2)`, the pitch one against a comb filter's effect on harmonics and noise."""

import pathlib
import subprocess
import sys

import librosa
import numpy as np
import pytest
import scipy.signal
from conftest import load_tool

from telugu_jax import respond
from telugu_jax.inference.postfilter import StreamPostfilter
from telugu_jax.inference.postfilter import flag as postfilter_flag
from telugu_jax.inference.postfilter import (formant_postfilter, parse_names, pitch_postfilter,
                                             postfilter)
from telugu_jax.serve import __main__ as serve_main

RATE = 16000
FORMANTS = ((700, 400), (1800, 500), (2900, 600))  # (Hz, bandwidth Hz): a blurred vowel


def _whispered_vowel(seconds: float = 4.0) -> tuple[np.ndarray, list[complex]]:
  """White noise through a cascade of two-pole resonators (-16 dBFS RMS), and their poles."""
  wave = np.random.default_rng(0).standard_normal(int(seconds * RATE))
  poles = []
  for frequency, bandwidth in FORMANTS:
    pole = np.exp(-np.pi * bandwidth / RATE + 2j * np.pi * frequency / RATE)
    wave = scipy.signal.lfilter([1.0], [1.0, -2 * pole.real, abs(pole) ** 2], wave)
    poles.append(pole)
  return (0.158 * wave / np.sqrt(np.mean(wave ** 2))).astype(np.float32), poles


def _long_term_spectrum_db(wave: np.ndarray) -> np.ndarray:
  return 10 * np.log10(np.mean(np.abs(librosa.stft(wave, n_fft=512, hop_length=128)) ** 2, 1))


def test_equal_coefficients_return_the_input_and_rows_are_independent():
  vowel, _ = _whispered_vowel(1.0)
  np.testing.assert_allclose(formant_postfilter(vowel, 0.8, 0.8), vowel, atol=1e-5)
  noise = np.random.default_rng(1).standard_normal(vowel.size).astype(np.float32) * 0.1
  batch = formant_postfilter(np.stack([vowel, noise]))
  np.testing.assert_allclose(batch[1], formant_postfilter(noise), atol=1e-6)
  assert batch.shape == (2, vowel.size) and batch.dtype == np.float32


@pytest.mark.parametrize("numerator,denominator", [(0.6, 0.95), (0.5, 0.8)])
def test_reshapes_the_spectrum_as_the_classic_post_filter_of_the_true_envelope(numerator,
                                                                               denominator):
  """The all-pole envelope `1/A(z)` of the resonators has the cepstrum `sum_p p**n / n`, so
  `A(z/g1) / A(z/g2)` without its level and tilt terms changes the log spectrum by
  `sum_{n=2}^{59} (g2**n - g1**n) c_n cos(n w)`: computed here from the poles, measured on the
  filtered noise's long-term spectrum (up to the constant that keeps the level)."""
  vowel, poles = _whispered_vowel()
  filtered = formant_postfilter(vowel, numerator, denominator)
  n = np.arange(2, 60)
  cepstrum = np.sum([2 * np.abs(p) ** n * np.cos(n * np.angle(p)) / n for p in poles], axis=0)
  omega = np.linspace(0, np.pi, 257)
  expected = 20 / np.log(10) * np.cos(omega[:, None] * n) @ (
      (denominator ** n - numerator ** n) * cepstrum)
  measured = _long_term_spectrum_db(filtered) - _long_term_spectrum_db(vowel)
  inside = (omega > np.pi / 80) & (omega < np.pi * 15 / 16)  # 100 Hz ... 7.5 kHz
  error = (measured - expected)[inside]
  error -= error.mean()
  assert np.ptp(expected[inside]) > 3.5  # dB: a change worth measuring
  assert np.sqrt(np.mean(error ** 2)) < 0.3 and np.max(np.abs(error)) < 0.8
  # The filter keeps each frame's energy, so the level too.
  assert np.sqrt(np.mean(filtered ** 2)) == pytest.approx(np.sqrt(np.mean(vowel ** 2)), rel=0.02)


def test_rejects_coefficients_that_are_not_a_post_filter():
  with pytest.raises(ValueError, match="numerator <= denominator"):
    formant_postfilter(np.zeros(1000), 0.9, 0.6)
  with pytest.raises(ValueError, match="quefrencies"):
    formant_postfilter(np.zeros(1000), quefrencies=2)


def _harmonic_tone(period: int, seconds: float, rng) -> np.ndarray:
  """Harmonics 2 ... 19 of `RATE / period` Hz at random phases (no fundamental), 0.1 RMS."""
  n = np.arange(int(seconds * RATE))
  tone = sum(np.cos(2 * np.pi * k * n / period + rng.uniform(0, 2 * np.pi)) / k
             for k in range(2, 20))
  return 0.1 * tone / tone.std()


@pytest.mark.parametrize("period,strength", [(123, 1.0), (57, 0.5)])  # 130 Hz, 281 Hz
def test_pitch_postfilter_keeps_the_harmonics_and_lowers_the_noise_between_them(period, strength):
  """At 10 dB SNR a frame's normalised autocorrelation at the period is 10/11, so the comb's gain
  is `g = strength * 10/11` and white noise keeps `(1 + g**2/2) / (1 + g)**2` of its power
  (-4.1 / -2.8 dB), while the harmonics pass unchanged: the output minus the clean tone is the
  filtered noise."""
  rng = np.random.default_rng(period)
  tone = _harmonic_tone(period, 2.0, rng)
  np.testing.assert_allclose(pitch_postfilter(tone.astype(np.float32), strength), tone, atol=1e-6)
  noise = rng.standard_normal(tone.size) * 0.1 / np.sqrt(10)
  filtered = pitch_postfilter((tone + noise).astype(np.float32), strength)
  gain = strength * 10 / 11
  expected_db = 10 * np.log10((1 + gain ** 2 / 2) / (1 + gain) ** 2)
  measured_db = 10 * np.log10(np.mean((filtered - tone) ** 2) / np.mean(noise ** 2))
  assert measured_db == pytest.approx(expected_db, abs=0.15)


def test_pitch_postfilter_leaves_noise_silence_and_rows_alone():
  rng = np.random.default_rng(2)
  noise = (rng.standard_normal(RATE) * 0.1).astype(np.float32)
  np.testing.assert_array_equal(pitch_postfilter(noise), noise)  # never voiced
  np.testing.assert_array_equal(pitch_postfilter(np.zeros(RATE, np.float32)), 0.0)
  tone = (_harmonic_tone(123, 1.0, rng) + 0.03 * rng.standard_normal(RATE)).astype(np.float32)
  np.testing.assert_array_equal(pitch_postfilter(tone, strength=0.0), tone)
  batch = pitch_postfilter(np.stack([tone, noise]))
  assert batch.shape == (2, RATE) and batch.dtype == np.float32
  np.testing.assert_allclose(batch[0], pitch_postfilter(tone), atol=1e-7)
  assert not np.allclose(batch[0], tone, atol=1e-3)
  with pytest.raises(ValueError, match="strength"):
    pitch_postfilter(tone, strength=1.5)
  with pytest.raises(ValueError, match="voicing"):
    pitch_postfilter(tone, voicing=1.0)
  with pytest.raises(ValueError, match="min_hz"):
    pitch_postfilter(tone, min_hz=500.0)


def test_postfilter_names_and_order():
  rng = np.random.default_rng(3)
  voiced = (_harmonic_tone(140, 1.0, rng) + 0.03 * rng.standard_normal(RATE)).astype(np.float32)
  assert parse_names("formant, pitch") == ("pitch", "formant") == parse_names(["pitch", "formant"])
  np.testing.assert_array_equal(postfilter(voiced, "formant,pitch"),
                                formant_postfilter(pitch_postfilter(voiced)))
  np.testing.assert_array_equal(postfilter(voiced, "pitch"), pitch_postfilter(voiced))
  for bad in ("", "formant,tilt"):
    with pytest.raises(ValueError, match="post-filters are pitch, formant"):
      parse_names(bad)


@pytest.mark.parametrize("command", ["respond", "serve", "evaluate_codec",
                                     "evaluate_conversations"])
def test_the_tools_postfilter_flag_normalises_and_rejects_unknown_names(command, capsys):
  """Each command line's `--postfilter`: "" is none, names come in `NAMES` order, an unknown
  name is a usage error (exit 2) that names the post-filters, before any model is loaded."""
  assert postfilter_flag("") == "" and postfilter_flag("formant,pitch") == "pitch,formant"
  main = {"respond": lambda: respond.main,
          "serve": lambda: serve_main.main,
          "evaluate_codec": lambda: load_tool("evaluate_codec").main,
          "evaluate_conversations": lambda: load_tool("evaluate_conversations").main}[command]()
  required = {"respond": ["/nonexistent.wav", "/nonexistent/out.wav", "--codec=/nonexistent",
                          "--s2s=/nonexistent"],
              "serve": ["--codec=/nonexistent", "--s2s=/nonexistent"],
              "evaluate_codec": ["--checkpoint=/nonexistent", "--clips=/nonexistent",
                                 "--output=/nonexistent"],
              "evaluate_conversations": ["--codec=/nonexistent", "--s2s=/nonexistent",
                                         "--pairs=/nonexistent", "--output=/nonexistent"]}[command]
  with pytest.raises(SystemExit) as exit_info:
    main([*required, "--postfilter=pitch,tilt"])
  assert exit_info.value.code == 2
  assert "argument --postfilter: post-filters are pitch, formant" in capsys.readouterr().err


def test_the_command_lines_parse_without_importing_jax():
  """`--help` and usage errors come at once: the flag's module does not pull in JAX."""
  code = (
      "import contextlib, io, sys\n"
      "sys.path.insert(0, 'tests')\n"
      "from conftest import load_tool\n"
      "from telugu_jax import respond\n"
      "from telugu_jax.serve import __main__ as serve_main\n"
      "for main in (respond.main, serve_main.main, load_tool('evaluate_codec').main,\n"
      "             load_tool('evaluate_conversations').main):\n"
      "  with contextlib.redirect_stdout(io.StringIO()):\n"
      "    try:\n"
      "      main(['--help'])\n"
      "    except SystemExit:\n"
      "      pass\n"
      "print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))\n")
  run = subprocess.run([sys.executable, "-c", code], cwd=pathlib.Path(__file__).parents[1],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == "[]", run.stdout



@pytest.mark.parametrize("names", ["formant", "pitch", "pitch,formant"])
def test_stream_postfilter_in_any_chunks_equals_the_whole_utterance(names):
  """A voiced sound whose pitch and loudness drift, pushed in random chunks (empty ones too),
  twice (flush starts a new utterance), against `postfilter` of each whole utterance."""
  rng = np.random.default_rng(4)
  n = np.arange(int(2.5 * RATE))
  pitch = 140 * (1 + 0.2 * np.sin(n / 8000))
  sound = (0.1 * np.cos(2 * np.pi * np.cumsum(pitch) / RATE) * (1.2 + np.sin(n / 3000))
           + 0.02 * rng.standard_normal(n.size)).astype(np.float32)
  stream = StreamPostfilter(names)
  for utterance in (sound, sound[:700]):
    parts, start = [], 0
    while start < utterance.size:
      chunk = utterance[start:start + int(rng.integers(0, 2500))]
      parts.append(stream.push(chunk))
      start += chunk.size
      held_back = start - sum(p.size for p in parts)
      assert held_back == min(start, stream.latency_samples)
    parts.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(parts), postfilter(utterance, names), atol=1e-7)
  assert not np.allclose(postfilter(sound, names), sound, atol=1e-3)
  with pytest.raises(ValueError, match="shape"):
    stream.push(np.zeros((2, 10), np.float32))
