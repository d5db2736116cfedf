"""Figures written at evaluation: original vs reconstruction spectrograms."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import librosa  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def spectrogram_comparison(original: np.ndarray, reconstruction: np.ndarray, path: str,
                           sample_rate: int = 16000, title: str = "",
                           labels: tuple[str, str] = ("original", "reconstruction")) -> None:
  """Writes a PNG with the log-mel spectrograms of `original` (top) and `reconstruction`."""
  fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
  for ax, wave, label in zip(axes, (original, reconstruction), labels):
    mel = librosa.feature.melspectrogram(y=np.asarray(wave, np.float32), sr=sample_rate,
                                         n_fft=1024, hop_length=256, n_mels=80)
    image = ax.imshow(librosa.power_to_db(mel + 1e-10, ref=1.0, top_db=80.0), origin="lower",
                      aspect="auto", cmap="magma",
                      extent=(0, max(len(wave), 1) / sample_rate, 0, 80))
    ax.set_ylabel(f"{label}\nmel bin")
  axes[1].set_xlabel("seconds")
  fig.colorbar(image, ax=axes, label="dB")
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=100)
  plt.close(fig)
