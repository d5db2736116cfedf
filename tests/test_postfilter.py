"""The formant post-filter (`inference/postfilter.py`) against the response of the classic one."""

import librosa
import numpy as np
import pytest
import scipy.signal

from telugu_jax.inference.postfilter import formant_postfilter

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
