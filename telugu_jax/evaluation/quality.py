"""Speech quality of a reconstruction against its reference: the standard metrics, offline.

Each metric comes from its reference package, with the models those packages ship (nothing is
downloaded):

| column | metric | package | range, better |
|---|---|---|---|
| `pesq` | PESQ wide-band (ITU-T P.862.2) | `pesq` | 1.04 … 4.64, higher |
| `stoi`, `estoi` | STOI, extended STOI | `pystoi` | 0 … 1, higher |
| `visqol` | ViSQOL v3 speech MOS-LQO (lattice mapper) | `visqol-python[lattice]` | 1 … 5, higher |
| `dnsmos_*` | DNSMOS P.835 `sig`, `bak`, `ovrl`; P.808 | `speechmos` (ONNX) | 1 … 5, higher |
| `si_sdr`, `snr` | SI-SDR, SNR in dB | `metrics.py` | higher |
| `mel_distance` | multi-scale log-mel L1 | `metrics.py` | ≥ 0, lower |

DNSMOS needs no reference: it is computed on the reconstruction (`dnsmos_*`) and, for
comparison, on the reference (`input_dnsmos_ovrl`). Every metric runs at 16 kHz; other rates are
resampled first. The packages are imported on first use, so `quick_quality` (PESQ and STOI, a
fraction of a second per clip) costs the trainer neither ONNX nor TFLite.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax.data import audio
from telugu_jax.evaluation import metrics

SAMPLE_RATE = 16000

OPTIONAL_METRICS = ("pesq", "stoi", "visqol", "dnsmos")
"""Metric groups `clip_quality` can compute besides the signal metrics (which are always on)."""

COLUMNS = {
    "signal": ("si_sdr", "snr", "mel_distance"),
    "pesq": ("pesq",),
    "stoi": ("stoi", "estoi"),
    "visqol": ("visqol",),
    "dnsmos": ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "input_dnsmos_ovrl"),
}
"""The result columns of each metric group."""

LOWER_IS_BETTER = frozenset({"mel_distance"})

# pystoi returns this (with a warning) when under 30 frames of speech remain.
_STOI_TOO_SHORT = 1e-5


def columns(groups: Sequence[str] = OPTIONAL_METRICS) -> list[str]:
  """The result columns of `clip_quality(..., metrics=groups)`, in order."""
  _check_groups(groups)
  return [c for group in ("signal", *OPTIONAL_METRICS) if group == "signal" or group in groups
          for c in COLUMNS[group]]


def _check_groups(groups: Sequence[str]) -> None:
  unknown = sorted(set(groups) - set(OPTIONAL_METRICS))
  if unknown:
    raise ValueError(f"unknown metrics {unknown}: expected some of {list(OPTIONAL_METRICS)}")


def _at_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  wave = np.asarray(wave, np.float32)
  if wave.ndim != 1:
    raise ValueError(f"expected a mono wave [T], got shape {wave.shape}")
  return audio.resample(wave, sample_rate, SAMPLE_RATE)


def _pair(reference: np.ndarray, estimate: np.ndarray,
          sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """Both waves at 16 kHz, float64, cut to the shorter length."""
  reference, estimate = _at_16k(reference, sample_rate), _at_16k(estimate, sample_rate)
  length = min(reference.size, estimate.size)
  return reference[:length].astype(np.float64), estimate[:length].astype(np.float64)


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
  """Wide-band PESQ (MOS-LQO).

  Args:
    reference: mono float wave `[T]`.
    estimate: mono float wave; both are cut to the shorter length.
    sample_rate: their rate in Hz.

  Returns:
    The score, or NaN (logged) when PESQ cannot score the pair (no speech found, too short).
  """
  import pesq

  reference, estimate = _pair(reference, estimate, sample_rate)
  try:
    with np.errstate(divide="ignore", invalid="ignore"):  # pesq divides silence by its peak.
      return float(pesq.pesq(SAMPLE_RATE, reference, estimate, "wb"))
  except pesq.PesqError as e:
    logging.warning("PESQ undefined: %s: %s", type(e).__name__, e)
    return math.nan


def stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE,
         extended: bool = False) -> float:
  """STOI, or with `extended` ESTOI; NaN when fewer than 30 frames of speech (~0.4 s) remain.

  Args:
    reference: mono float wave `[T]`.
    estimate: mono float wave; both are cut to the shorter length.
    sample_rate: their rate in Hz.
    extended: compute ESTOI (robust to modulated noise) instead of STOI.

  Returns:
    The score, or NaN.
  """
  import pystoi

  reference, estimate = _pair(reference, estimate, sample_rate)
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Not enough STFT frames")
    score = float(pystoi.stoi(reference, estimate, SAMPLE_RATE, extended=extended))
  return math.nan if score == _STOI_TOO_SHORT else score


@functools.cache
def _visqol_api():
  from visqol import VisqolApi

  api = VisqolApi()
  api.create(mode="speech", use_lattice_model=True)
  return api


def visqol_speech(reference: np.ndarray, estimate: np.ndarray,
                  sample_rate: int = SAMPLE_RATE) -> float:
  """ViSQOL v3 speech mode MOS-LQO (16 kHz, the bundled deep-lattice quality mapper).

  Args:
    reference: mono float wave `[T]`.
    estimate: mono float wave; both are cut to the shorter length.
    sample_rate: their rate in Hz.

  Returns:
    The score in [1, 5], or NaN (logged) when ViSQOL cannot score the pair (clips of half a
    second or less fail inside its patch search).
  """
  reference, estimate = _pair(reference, estimate, sample_rate)
  try:
    return float(_visqol_api().measure_from_arrays(reference, estimate, SAMPLE_RATE).moslqo)
  except (ValueError, IndexError) as e:  # What it raises for too little audio.
    logging.warning("ViSQOL undefined: %s: %s", type(e).__name__, e)
    return math.nan


def dnsmos(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
  """Non-intrusive DNSMOS of one wave (the bundled ONNX models of `speechmos`).

  Args:
    wave: mono float wave `[T]`; samples outside [-1, 1] are clipped.
    sample_rate: its rate in Hz.

  Returns:
    `ovrl`, `sig`, `bak` (P.835 overall, speech, background) and `p808`.
  """
  from speechmos import dnsmos as dnsmos_lib

  wave = np.clip(_at_16k(wave, sample_rate), -1.0, 1.0)
  result = dnsmos_lib.run(wave, SAMPLE_RATE)
  return {k: float(result[f"{k}_mos"]) for k in ("ovrl", "sig", "bak", "p808")}


@jax.jit
def _signal_metrics(reference: jax.Array, estimate: jax.Array) -> dict[str, jax.Array]:
  lengths = jnp.full((1,), reference.shape[-1])
  return {"si_sdr": metrics.si_sdr_db(reference, estimate, lengths)[0],
          "snr": metrics.snr_db(reference, estimate, lengths)[0],
          "mel_distance": metrics.mel_distance(reference, estimate, lengths)[0]}


def signal_metrics(reference: np.ndarray, estimate: np.ndarray,
                   sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
  """SI-SDR, SNR (dB) and multi-scale mel distance of the whole clip (`metrics.py`).

  Compiles once per clip length (about a second on a CPU).

  Args:
    reference: mono float wave `[T]`.
    estimate: mono float wave; both are cut to the shorter length.
    sample_rate: their rate in Hz.

  Returns:
    `si_sdr`, `snr`, `mel_distance`.
  """
  reference, estimate = _pair(reference, estimate, sample_rate)
  values = _signal_metrics(reference[None].astype(np.float32), estimate[None].astype(np.float32))
  return {k: float(v) for k, v in values.items()}


def quick_quality(reference: np.ndarray, estimate: np.ndarray,
                  sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
  """PESQ (wide-band) and STOI: cheap enough for a few clips at every evaluation of training.

  Args:
    reference: mono float wave `[T]`.
    estimate: mono float wave; both are cut to the shorter length.
    sample_rate: their rate in Hz.

  Returns:
    `{"pesq": ..., "stoi": ...}` (NaN where undefined, see `pesq_wb` and `stoi`).
  """
  return {"pesq": pesq_wb(reference, estimate, sample_rate),
          "stoi": stoi(reference, estimate, sample_rate)}


def clip_quality(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE,
                 metrics: Sequence[str] = OPTIONAL_METRICS) -> dict[str, float]:
  """Every metric of one clip: the signal metrics plus the chosen optional groups.

  Args:
    reference: mono float wave `[T]`.
    estimate: mono float wave; both are cut to the shorter length.
    sample_rate: their rate in Hz.
    metrics: optional groups among `OPTIONAL_METRICS`.

  Returns:
    A value (float, NaN where undefined) for each of `columns(metrics)`.
  """
  _check_groups(metrics)
  reference, estimate = _pair(reference, estimate, sample_rate)
  result = signal_metrics(reference, estimate)
  if "pesq" in metrics:
    result["pesq"] = pesq_wb(reference, estimate)
  if "stoi" in metrics:
    result["stoi"] = stoi(reference, estimate)
    result["estoi"] = stoi(reference, estimate, extended=True)
  if "visqol" in metrics:
    result["visqol"] = visqol_speech(reference, estimate)
  if "dnsmos" in metrics:
    result.update({f"dnsmos_{k}": v for k, v in dnsmos(estimate).items()})
    result["input_dnsmos_ovrl"] = dnsmos(reference)["ovrl"]
  return {c: result[c] for c in columns(metrics)}
