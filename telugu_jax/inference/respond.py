"""Speech in, speech out: a question wave to an answer wave, with the time of every stage.

    from telugu_jax import inference
    responder = inference.Responder(inference.load_codec(CODEC), inference.load_s2s(S2S))
    answer, timings = responder.respond(wave, speaker="female_young", emotion="happy",
                                        sample_rate=44100, max_seconds=10)

The question (any rate, mono `[T]` or `[T, channels]`) is folded to mono, resampled to 16 kHz and
level-normalised with the training rule (`audio.normalize_rms`), encoded by the codec, answered
by the S2S model (`generate`) and the answer codes decoded by the same codec: float32 `[T']` at
16 kHz. `python -m telugu_jax.respond` is the file and folder front end.

The code frame rate is read from the codec (samples per frame = `num_samples(f + 1) -
num_samples(f)`, the product of its strides), never assumed. In the fixed variant the question's
codes are right-padded with the padding id to a length bucket (1, 1.5, 2, 3, 4, ... seconds of
frames; the padding is masked), so generation compiles once per bucket and `max_frames`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from telugu_jax.data import audio
from telugu_jax.data import records
from telugu_jax.data import shards
from telugu_jax.inference.codec import CodecModel
from telugu_jax.inference.postfilter import postfilter as apply_postfilter
from telugu_jax.inference.s2s import S2S

SAMPLE_RATE = audio.SAMPLE_RATE
SILENCE = shards.QualityRules()
"""The shard builder's silence limits (peak below -60 dBFS or RMS below -70 dBFS)."""


class QuestionError(ValueError):
  """A question that cannot be answered: silent, or shorter than one code frame."""


def frame_hop(codec: CodecModel) -> int:
  """Samples per code frame: the decoder's output grows by this much per frame."""
  return codec.num_samples(2) - codec.num_samples(1)


def style_id(value: int | str, vocabulary: dict[str, int], count: int, what: str) -> int:
  """A speaker or emotion id from an id or a name (`records.SPEAKER_IDS` / `EMOTION_IDS`).

  Args:
    value: an int, a string of digits or a name of `vocabulary`.
    vocabulary: name -> id.
    count: the model's number of ids (valid ids are `0 .. count - 1`).
    what: "speaker" or "emotion", for the message.

  Raises:
    ValueError: an unknown name or an id outside the model's range.
  """
  text = str(value).strip()
  if text.isdigit():
    index = int(text)
  elif text in vocabulary:
    index = vocabulary[text]
  else:
    names = ", ".join(n for n, i in sorted(vocabulary.items(), key=lambda x: x[1]) if i < count)
    raise ValueError(f"unknown {what} {text!r} (expected an id 0..{count - 1} or one of {names})")
  if not 0 <= index < count:
    raise ValueError(f"{what} id {index} is outside the model's range 0..{count - 1}")
  return index


def _ms(start: float) -> float:
  return 1000.0 * (time.perf_counter() - start)


class Responder:
  """A codec and an S2S model that answer spoken questions.

  Args:
    codec: the codec whose codes the S2S model was trained on.
    s2s: the S2S model.

  Raises:
    ValueError: the codec's levels or codebook size differ from the S2S model's.
  """

  def __init__(self, codec: CodecModel, s2s: S2S):
    c = s2s.config
    if (codec.num_quantizers, codec.codebook_size) != (c.num_quantizers, c.vocab_size):
      raise ValueError(
          f"the codec has {codec.num_quantizers} levels of {codec.codebook_size} codes, the S2S "
          f"model {c.num_quantizers} levels of {c.vocab_size} codes")
    self.codec, self.s2s = codec, s2s
    self.hop = frame_hop(codec)
    self.frame_rate = SAMPLE_RATE / self.hop

  def max_frames(self, max_seconds: float) -> int:
    """The most answer frames that fit in `max_seconds` (at least 1)."""
    if not max_seconds > 0:
      raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    return max(1, int(max_seconds * SAMPLE_RATE // self.hop))

  def speaker_id(self, speaker: int | str) -> int:
    return style_id(speaker, records.SPEAKER_IDS, self.s2s.config.num_speakers, "speaker")

  def emotion_id(self, emotion: int | str) -> int:
    return style_id(emotion, records.EMOTION_IDS, self.s2s.config.num_emotions, "emotion")

  def prepare(self, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono, 16 kHz, level-normalised float32 `[T]` as the codec saw it in training.

    Args:
      wave: float `[T]` or `[T, channels]` in [-1, 1].
      sample_rate: its rate in Hz.

    Raises:
      QuestionError: empty, silent, non-finite, or shorter than one code frame.
    """
    return audio.normalize_rms(self.check(wave, sample_rate))

  def check(self, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`prepare` without the level normalisation: mono float32 `[T]` at 16 kHz, or a
    QuestionError."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim not in (1, 2):
      raise QuestionError(f"expected audio [T] or [T, channels], got shape {wave.shape}")
    if wave.size == 0:
      raise QuestionError("empty audio (no samples)")
    if not np.all(np.isfinite(wave)):
      raise QuestionError("audio holds NaN or infinite samples")
    wave = audio.resample(audio.to_mono(wave), sample_rate, SAMPLE_RATE)
    silent = [text for kind, text in SILENCE.segment_problems(audio.level_stats(wave))
              if kind == "silent"]
    if silent:
      raise QuestionError(f"no speech: {silent[0]}")
    if self.codec.num_frames(wave.size) < 1:
      raise QuestionError(f"{wave.size / SAMPLE_RATE * 1000:.1f} ms of audio, shorter than one "
                          "code frame")
    return wave

  def question_codes(self, codes: np.ndarray) -> np.ndarray:
    """Pads the fixed variant's question codes to a length bucket with the padding id."""
    c = self.s2s.config
    if c.is_original:
      return codes
    frames = codes.shape[-1]
    width = audio.bucket_length(frames, max(1, round(self.frame_rate)))
    return np.pad(codes, ((0, 0), (0, 0), (0, width - frames)), constant_values=c.pad_id)

  def respond(self, wave: np.ndarray, speaker: int | str = 0, emotion: int | str = 0, *,
              sample_rate: int = SAMPLE_RATE, max_seconds: float = 10.0,
              temperature: float = 0.8, top_k: int = 0, top_p: float = 0.95, seed: int = 0,
              beam_size: int = 0, postfilter: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Answers one spoken question.

    Args:
      wave: the question, float `[T]` or `[T, channels]` in [-1, 1].
      speaker: the answer's speaker, an id or a `records.SPEAKER_IDS` name.
      emotion: the answer's emotion, an id or a `records.EMOTION_IDS` name.
      sample_rate: the question's rate in Hz.
      max_seconds: the longest answer; generation stops after this many seconds of frames.
      temperature: sampling temperature (0 is greedy).
      top_k: keep the k most likely codes (0: all).
      top_p: nucleus sampling mass (1: off).
      seed: the sampling seed.
      beam_size: > 0: the most likely answer by a beam search of this width instead of sampling
        (`S2S.generate`).
      postfilter: post-filters for the decoded answer, `postfilter.NAMES` comma-separated
        (`"pitch,formant"`; "" = none; timed in `decode_ms`).

    Returns:
      `(answer, timings)`: float32 `[T']` at 16 kHz (empty when the model ends at once), and
      `prepare_ms`, `encode_ms`, `generate_ms`, `decode_ms`, `total_ms` (all stages),
      `question_seconds`, `question_frames`, `frames` (answer frames), `max_frames`, `ended`
      (end-of-speech before `max_frames`), `answer_seconds` and `rtf` (processing time / answer
      duration; infinite for an empty answer).

    Raises:
      QuestionError: see `prepare`.
      ValueError: an unknown speaker or emotion, or `max_seconds` not positive.
    """
    speaker_id, emotion_id = self.speaker_id(speaker), self.emotion_id(emotion)
    max_frames = self.max_frames(max_seconds)
    start = time.perf_counter()
    question = self.prepare(wave, sample_rate)
    timings: dict[str, Any] = {"prepare_ms": _ms(start)}

    stage = time.perf_counter()
    codes = self.codec.encode(question[None])
    timings["encode_ms"] = _ms(stage)

    stage = time.perf_counter()
    answer_codes, lengths = self.s2s.generate(
        self.question_codes(codes), speaker_id, emotion_id, max_frames=max_frames,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, beam_size=beam_size)
    frames = int(lengths[0])
    timings["generate_ms"] = _ms(stage)

    stage = time.perf_counter()
    if frames:
      answer = self.codec.decode(answer_codes[:, :, :frames])[0]
      if postfilter:
        answer = apply_postfilter(answer, postfilter)
    else:
      answer = np.zeros(0, np.float32)
    timings["decode_ms"] = _ms(stage)

    total_ms = _ms(start)
    answer_seconds = answer.size / SAMPLE_RATE
    timings.update(
        total_ms=total_ms, question_seconds=question.size / SAMPLE_RATE,
        question_frames=int(codes.shape[-1]), frames=frames, max_frames=max_frames,
        ended=frames < max_frames, answer_seconds=answer_seconds,
        rtf=total_ms / 1000.0 / answer_seconds if answer.size else math.inf)
    return answer, timings
