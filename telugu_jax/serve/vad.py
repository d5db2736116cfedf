"""Voice activity and end-of-turn detection: Silero VAD (ONNX) with hysteresis.

    vad = SileroVAD()                        # one model for all sessions
    turns = TurnDetector(vad, TurnSettings(silence_ms=600))
    for event in turns.push(samples):        # float32 [n] at 16 kHz, any n
      ...                                    # Event("start" | "end", sample)

The model (`assets/silero_vad_v5.onnx`, MIT, vendored with its licence) gives the probability of
speech of each 32 ms window (512 samples, seen with the previous window's last 64 samples, as
Silero's own wrapper does). Speech starts after `min_speech_ms` of windows at or above
`threshold` and ends after `silence_ms` of windows below `release` (hysteresis: between the two
the state does not change).
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np
import onnxruntime

SAMPLE_RATE = 16000
WINDOW = 512  # samples per decision (32 ms)
CONTEXT = 64  # samples of the previous window each decision also sees
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                             "silero_vad_v5.onnx")


class SileroVAD:
  """The Silero VAD v5 model. `run` is thread-safe: the recurrent state is the caller's.

  Args:
    path: the ONNX file.
    threads: onnxruntime intra-op threads (one window is a few hundred microseconds).
  """

  def __init__(self, path: str = DEFAULT_MODEL, threads: int = 1):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no VAD model")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    self._session = onnxruntime.InferenceSession(path, options,
                                                 providers=["CPUExecutionProvider"])
    self._rate = np.array(SAMPLE_RATE, np.int64)

  @staticmethod
  def initial_state() -> np.ndarray:
    return np.zeros((2, 1, 128), np.float32)

  def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
    """One window.

    Args:
      window: float32 `[CONTEXT + WINDOW]`: the previous window's last 64 samples, then 512 new.
      state: `[2, 1, 128]` from `initial_state` or the previous call.

    Returns:
      `(probability of speech, new state)`.
    """
    probability, state = self._session.run(
        None, {"input": window[None], "state": state, "sr": self._rate})
    return float(probability[0, 0]), state


@dataclasses.dataclass(frozen=True)
class TurnSettings:
  """End-of-turn detection settings.

  Attributes:
    threshold: a window is speech at this probability or above.
    release: once speaking, a window is silence only below this probability.
    min_speech_ms: speech this long (consecutive windows) starts a turn.
    silence_ms: silence this long after speech ends the turn.
  """
  threshold: float = 0.5
  release: float = 0.35
  min_speech_ms: float = 96.0
  silence_ms: float = 600.0

  def __post_init__(self):
    if not 0 < self.release <= self.threshold < 1:
      raise ValueError(f"need 0 < release <= threshold < 1, got release {self.release} and "
                       f"threshold {self.threshold}")
    if self.min_speech_ms < 0 or self.silence_ms <= 0:
      raise ValueError(f"need min_speech_ms >= 0 and silence_ms > 0, got {self.min_speech_ms} "
                       f"and {self.silence_ms}")


class Event(NamedTuple):
  """A turn boundary: `kind` "start" (the first speech window's first sample) or "end" (the
  sample just after the last speech window), `sample` counted from the stream's start."""
  kind: str
  sample: int


def _windows(ms: float) -> int:
  return max(1, round(ms * SAMPLE_RATE / 1000 / WINDOW))


class TurnDetector:
  """Streams audio through the VAD and reports where speech starts and ends.

  Args:
    vad: the shared model.
    settings: thresholds and durations.
  """

  def __init__(self, vad: SileroVAD, settings: TurnSettings = TurnSettings()):
    self.vad, self.settings = vad, settings
    self._start_windows = _windows(settings.min_speech_ms)
    self._end_windows = _windows(settings.silence_ms)
    self.reset()

  def reset(self) -> None:
    """A new stream: no speech, sample 0."""
    self.speaking = False
    self.samples = 0  # samples pushed
    self._pending = np.zeros(0, np.float32)
    self._context = np.zeros(CONTEXT, np.float32)
    self._state = self.vad.initial_state()
    self._run = 0  # consecutive windows on the other side of the hysteresis
    self._window = 0  # index of the next window

  def push(self, samples: np.ndarray) -> list[Event]:
    """float32 `[n]` at 16 kHz → the turn boundaries decided by the windows they complete."""
    self.samples += samples.size
    pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
    count = pending.size // WINDOW
    self._pending = pending[count * WINDOW:]
    events = []
    for i in range(count):
      window = pending[i * WINDOW:(i + 1) * WINDOW]
      probability, self._state = self.vad.run(np.concatenate([self._context, window]),
                                              self._state)
      self._context = window[-CONTEXT:]
      event = self._decide(probability)
      if event:
        events.append(event)
      self._window += 1
    return events

  def _decide(self, probability: float) -> Event | None:
    s = self.settings
    if not self.speaking:
      self._run = self._run + 1 if probability >= s.threshold else 0
      if self._run >= self._start_windows:
        self.speaking, self._run = True, 0
        return Event("start", (self._window + 1 - self._start_windows) * WINDOW)
    else:
      self._run = self._run + 1 if probability < s.release else 0
      if self._run >= self._end_windows:
        self.speaking, self._run = False, 0
        return Event("end", (self._window + 1 - self._end_windows) * WINDOW)
    return None

  @property
  def silence_start(self) -> int | None:
    """During a turn, the sample where the silence heard since the last speech began (a turn
    ended by silence ends there); None while speech goes on or outside a turn."""
    if self.speaking and self._run > 0:
      return (self._window - self._run) * WINDOW
    return None

  def end(self) -> None:
    """Ends a turn from outside (an explicit end of turn): the next speech starts a new one."""
    self.speaking, self._run = False, 0
