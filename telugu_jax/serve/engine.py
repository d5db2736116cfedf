"""The agent's model work: one codec and one S2S model shared by every session.

    engine = Engine(load_codec(CODEC), load_s2s(S2S), GenerationSettings(max_seconds=10))
    engine.warm_up(max_question_seconds=15, log=print)      # compiles every shape a turn uses
    answer = Answer(engine, wave, speaker=0, emotion=0, seed=0)
    timings = await engine.call(answer.start)               # prepare, encode the question
    while not answer.done:
      samples, step = await engine.call(answer.step)        # a few frames -> audio

All model calls run on one worker thread (`Engine.call`), one step at a time: sessions that
answer at once take turns step by step (each session waits for its previous step before asking
for the next), so a long answer never holds the others back, and the event loop never runs model
code. An answer streams: `S2S.stream` yields code frames as they are sampled, and every
`push_frames` frames (`first_push_frames` for the first push, to start sooner) go through the
codec's `stream_decoder()`. Stream decoders are pooled and reused across answers (`reset`), so
their compiled programs are too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax.data import audio
from telugu_jax.inference import generation
from telugu_jax.inference import postfilter as postfilter_lib
from telugu_jax.inference.codec import CodecModel
from telugu_jax.inference.respond import Responder
from telugu_jax.inference.s2s import S2S

SAMPLE_RATE = audio.SAMPLE_RATE
QUESTION_BUCKETS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
"""Question lengths in seconds that compile separately in the S2S model (its length buckets,
`audio.bucket_length` with one-second units); the codec's `encode` has its own, finer ones
(`CodecModel.encode_buckets`)."""


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """How answers are sampled and streamed.

  Attributes:
    max_seconds: the longest answer.
    temperature, top_k, top_p: sampling (`S2S.stream`).
    frames_per_call: S2S decoding steps per device call.
    first_push_frames: frames decoded into the first audio of an answer; 0 = the decoder's and
      the post-filter's lookahead plus `frames_per_call`.
    push_frames: frames per decoder push after the first; 0 = 80 ms of frames (16 at 200 Hz,
      4 at 50 Hz).
    postfilter: post-filters for the answer's audio (`postfilter.NAMES`, comma-separated;
      "" = none), streamed by `postfilter.StreamPostfilter`: its lookahead delays the audio.
  """
  max_seconds: float = 10.0
  temperature: float = 0.8
  top_k: int = 0
  top_p: float = 0.95
  frames_per_call: int = 4
  first_push_frames: int = 0
  push_frames: int = 0
  postfilter: str = ""

  def __post_init__(self):
    if not self.max_seconds > 0:
      raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
    if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
    if self.frames_per_call < 1 or self.push_frames < 0 or self.first_push_frames < 0:
      raise ValueError("need frames_per_call >= 1, push_frames >= 0 and first_push_frames >= 0")
    if self.postfilter:
      postfilter_lib.parse_names(self.postfilter)


@dataclasses.dataclass(frozen=True)
class QuestionSettings:
  """How a question is encoded while it is spoken (a causal codec and the fixed S2S variant).

  Attributes:
    stream: encode questions during the turn; otherwise (or with a non-causal codec, or the
      original S2S variant) the whole question is encoded when the turn ends.
    level_seconds: the level normalisation (`audio.normalize_rms`, over the whole question in
      training and in `respond`) takes its gains from the question's first `level_seconds`
      (from the start of the pre-roll) and applies them to the rest; a shorter question is
      normalised as a whole, exactly as `respond` does.
    push_ms: audio is handed to the model thread in pieces of at least this many ms.
    max_seconds: the longest question (the server's turn limit with its pre-roll and tail).
  """
  stream: bool = True
  level_seconds: float = 1.0
  push_ms: float = 160.0
  max_seconds: float = 16.0

  def __post_init__(self):
    if not (self.level_seconds > 0 and self.push_ms > 0 and self.max_seconds > 0):
      raise ValueError("need level_seconds > 0, push_ms > 0 and max_seconds > 0")


def _ms(start: float) -> float:
  return 1000.0 * (time.perf_counter() - start)


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
  """A vibrato tone float32 `[T]` at 16 kHz: a question that is not silence, for warm-up."""
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  return (0.3 * np.sin(2 * np.pi * freq * t + 3 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


class Engine:
  """The shared models, their worker thread and a pool of stream decoders.

  Args:
    codec: the codec the S2S model was trained on.
    s2s: the S2S model.
    settings: sampling and streaming settings.

  Raises:
    ValueError: the codec and the S2S model do not match (`Responder`).
  """

  def __init__(self, codec: CodecModel, s2s: S2S, settings: GenerationSettings,
               questions: QuestionSettings = QuestionSettings()):
    self.responder = Responder(codec, s2s)
    self.codec, self.s2s, self.settings, self.questions = codec, s2s, settings, questions
    self.max_frames = self.responder.max_frames(settings.max_seconds)
    self.streams_questions = (questions.stream and codec.model.causal
                              and not s2s.config.is_original)
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
    self._decoders: list[Any] = []
    self._encoders: list[Any] = []
    decoder = self.acquire_decoder()
    self.decoder_latency_samples = int(decoder.latency_samples)
    self.release_decoder(decoder)
    self.postfilter_latency_samples = (
        postfilter_lib.StreamPostfilter(settings.postfilter).latency_samples
        if settings.postfilter else 0)
    lookahead = math.ceil((self.decoder_latency_samples + self.postfilter_latency_samples)
                          / self.responder.hop)
    self.first_push_frames = settings.first_push_frames or lookahead + settings.frames_per_call
    self.push_frames = settings.push_frames or max(1, round(0.08 * self.responder.frame_rate))

  async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs `fn(*args)` on the model thread, after the calls queued before it."""
    return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

  def submit(self, fn: Callable[..., Any], *args: Any) -> None:
    """Queues `fn(*args)` on the model thread without waiting for it."""
    self._executor.submit(fn, *args)

  def close(self) -> None:
    self._executor.shutdown(wait=False, cancel_futures=True)

  @staticmethod
  def _acquire(pool: list[Any], make: Callable[[], Any]) -> Any:
    if pool:
      stream = pool.pop()
      stream.reset()
      return stream
    return make()

  def acquire_decoder(self) -> Any:
    """A reset stream decoder from the pool (a new one when the pool is empty)."""
    return self._acquire(self._decoders, self.codec.stream_decoder)

  def release_decoder(self, decoder: Any) -> None:
    self._decoders.append(decoder)

  def acquire_encoder(self) -> Any:
    """A reset stream encoder from the pool (causal codecs)."""
    return self._acquire(self._encoders, self.codec.stream_encoder)

  def release_encoder(self, encoder: Any) -> None:
    self._encoders.append(encoder)

  def warm_up(self, max_question_seconds: float, log: Callable[[str], None]) -> dict[str, float]:
    """Compiles what a turn needs: every question bucket up to `max_question_seconds` (codec
    encode, S2S encoder and first steps) and the decoder pushes of an answer.

    Runs on the calling thread (before serving). Returns the stage times of a warm run of the
    first bucket (streamed questions: the longest bucket up to 3 s): `prepare_ms`,
    `encode_ms`, `s2s_encoder_ms` (the S2S encoder pass and the decoding state),
    `first_frames_ms` (the first `first_push_frames` frames), `first_decode_ms`; and
    `question_seconds`.
    """
    buckets = [b for b in QUESTION_BUCKETS if b <= max_question_seconds]
    if not buckets or buckets[-1] < max_question_seconds:
      buckets.append(next((b for b in QUESTION_BUCKETS if b >= max_question_seconds),
                          max_question_seconds))
    if not self.streams_questions:  # whole questions go through the codec's `encode`
      buckets = sorted(set(buckets) | set(self.codec.encode_buckets(max_question_seconds)))
    for seconds in buckets:
      start = time.perf_counter()
      wave = tone(0.95 * seconds)
      answer = Answer(self, wave, 0, 0, seed=0, question=self._streamed(wave))
      answer.start()
      answer.step()
      answer.close()
      log(f"warm-up: {seconds:g} s questions compiled ({_ms(start) / 1000:.1f} s)")
    start = time.perf_counter()
    decoder = self.acquire_decoder()
    q, v = self.codec.num_quantizers, self.codec.codebook_size
    codes = np.random.default_rng(0).integers(0, v, (q, 512), np.int32)
    push = self.push_frames
    sizes = [self.first_push_frames] + [push] * math.ceil(256 / push)
    sizes += [1 << i for i in range(push.bit_length())]
    used = 0
    for size in sizes:
      decoder.push(codes[:, used % 256:used % 256 + size])
      used += size
    decoder.flush()
    self.release_decoder(decoder)
    if self.streams_questions:
      encoder = self.acquire_encoder()
      encoder.warmup()
      self.release_encoder(encoder)
    log(f"warm-up: stream {'encoder and ' if self.streams_questions else ''}decoder compiled "
        f"({_ms(start) / 1000:.1f} s)")
    # A streamed question longer than the level window shows the work left at a turn's end.
    return self.measure(max(b for b in buckets if b <= 3.0) if self.streams_questions
                        else buckets[0])

  def _streamed(self, wave: np.ndarray) -> QuestionStream | None:
    """A question stream that has been pushed `wave` in `push_ms` pieces, as a session pushes
    a question while it is spoken (None when questions are not streamed)."""
    if not self.streams_questions:
      return None
    stream = QuestionStream(self, 0, 0)
    piece = max(1, int(self.questions.push_ms * SAMPLE_RATE / 1000))
    for start in range(0, wave.size, piece):
      stream.push(wave[start:start + piece])
    return stream

  def measure(self, question_seconds: float) -> dict[str, float]:
    """The stage times of one warm answer start to a `question_seconds` tone (see `warm_up`).

    Streamed questions: `encode_ms` and `s2s_encoder_ms` are the work left at the end of the
    turn (`Answer.start`); `first_frames_ms` and `first_decode_ms` as below.
    """
    wave = tone(0.95 * question_seconds)
    if self.streams_questions:
      answer = Answer(self, wave, 0, 0, seed=0, question=self._streamed(wave))
      timings = answer.start()
      samples = np.zeros(0, np.float32)
      while samples.size == 0 and not answer.done:
        samples, step = answer.step()
      timings["first_frames_ms"] = step["s2s_ms"]
      timings["first_decode_ms"] = step["decode_ms"]
      answer.close()
      return timings
    r = self.responder
    start = time.perf_counter()
    question = r.prepare(wave)
    timings = {"question_seconds": wave.size / SAMPLE_RATE, "prepare_ms": _ms(start)}
    start = time.perf_counter()
    codes = r.question_codes(self.codec.encode(question[None]))
    timings["encode_ms"] = _ms(start)
    # The S2S encoder pass alone (called as `generation.stream` calls it, so the compiled program
    # is shared), then the first frames through `S2S.stream`, which repeats it.
    s = self.settings
    model, variables, codes_, speaker, emotion, _, seed = self.s2s.sampling_args(
        codes, 0, 0, s.temperature, s.top_k, s.top_p, 0)
    start = time.perf_counter()
    jax.block_until_ready(generation.init_state(model, variables, codes_, speaker, emotion, seed,
                                                self.max_frames))
    timings["s2s_encoder_ms"] = _ms(start)
    start = time.perf_counter()
    frames = self.s2s.stream(codes, 0, 0, max_frames=self.max_frames, temperature=s.temperature,
                             top_k=s.top_k, top_p=s.top_p, frames_per_call=s.frames_per_call)
    first = [frame[0] for frame, _ in zip(frames, range(self.first_push_frames))]
    timings["first_frames_ms"] = max(0.0, _ms(start) - timings["s2s_encoder_ms"])
    decoder = self.acquire_decoder()
    start = time.perf_counter()
    samples = decoder.push(np.stack(first, axis=1).astype(np.int32))
    if s.postfilter:
      postfilter_lib.StreamPostfilter(s.postfilter).push(samples)
    timings["first_decode_ms"] = _ms(start)
    self.release_decoder(decoder)
    return timings


class QuestionStream:
  """A question encoded while it is spoken: the causal codec's `stream_encoder()` and the S2S
  model's `generation.IncrementalEncoder`, so that the end of the turn leaves only its last
  frames and chunk to encode. `push` and `finish` run on the model thread (`Engine.submit`).

  The stream starts at the question's first sample. Audio is held back until `level_seconds`
  exist (see `QuestionSettings`), then scaled by the gains of that beginning; pushing past the
  question's end is allowed (the codec is causal and the S2S encoder undoes chunks that read
  past the end). With the whole question's gains (a question shorter than `level_seconds`) the
  codes equal the codec's `encode` of `respond`'s normalised question, and the encoder output
  equals the S2S encoder's on them.

  Args:
    engine: the shared models (`engine.streams_questions` must be true).
    speaker, emotion: the style of the answer (the S2S encoder input depends on it).
  """

  def __init__(self, engine: Engine, speaker: int, emotion: int):
    if not engine.streams_questions:
      raise ValueError("questions stream only with a causal codec and the fixed S2S variant")
    self.engine, self.speaker, self.emotion = engine, speaker, emotion
    self.received = 0  # samples pushed
    self._held: list[np.ndarray] = []  # samples before the gains are known
    self._gains: tuple[np.ndarray, np.ndarray] | None = None
    self._codec = None
    self._s2s = None
    self._level = int(engine.questions.level_seconds * SAMPLE_RATE)

  def _open(self) -> None:
    e = self.engine
    if self._codec is None:
      self._codec = e.acquire_encoder()
      self._s2s = generation.IncrementalEncoder(
          e.s2s.model, e.s2s.variables, self.speaker, self.emotion,
          capacity=e.codec.num_frames(int(e.questions.max_seconds * SAMPLE_RATE)) + 1)

  def _encode(self, samples: np.ndarray) -> None:
    gain, peak_gain = self._gains
    self._s2s.push(self._codec.push(samples * gain[0] * peak_gain[0]))

  def push(self, samples: np.ndarray) -> None:
    """More of the question (float32 `[n]` at 16 kHz, as received)."""
    self._open()
    self.received += samples.size
    if self._gains is None:
      self._held.append(samples)
      if self.received < self._level:
        return
      held, self._held = np.concatenate(self._held), []
      self._gains = audio.level_gains(held)
      samples = held
    self._encode(samples)

  def codes(self) -> np.ndarray:
    """The question's codes so far, int32 `[Q, k]`."""
    return self._s2s.codes if self._s2s is not None else np.zeros((0, 0), np.int32)

  def finish(self, wave: np.ndarray, seed: int, timings: dict[str, float]) -> generation.State:
    """Encodes what is left of the question `wave` (float32 `[T]`, its samples from the
    stream's start) and returns the S2S decoding state. Adds `encode_ms` (the codec's rest),
    `s2s_encoder_ms` (the S2S encoder's rest and the decoding state) and `streamed_seconds`
    to `timings`."""
    e = self.engine
    begin = time.perf_counter()
    streamed = min(self.received, wave.size) - sum(h.size for h in self._held)
    self._open()
    if self._gains is None:
      self._held = []
      self._gains = audio.level_gains(wave)
      self._encode(wave)
    elif self.received < wave.size:
      self._encode(wave[self.received:])
    self.received = max(self.received, wave.size)
    frames = e.codec.num_frames(wave.size)
    timings["encode_ms"] = _ms(begin)
    timings["streamed_seconds"] = max(0, streamed) / SAMPLE_RATE
    stage = time.perf_counter()
    width = audio.bucket_length(frames, max(1, round(e.responder.frame_rate)))
    memory, mask = self._s2s.finish(frames, width)
    state = generation.state_from_memory(e.s2s.model, e.s2s.variables, self._s2s.style, memory,
                                         mask, jnp.int32(seed), e.max_frames)
    timings["s2s_encoder_ms"] = _ms(stage)
    return state

  def close(self) -> None:
    """Returns the codec's stream encoder to the pool (model thread; idempotent)."""
    if self._codec is not None:
      self.engine.release_encoder(self._codec)
      self._codec = None


class Answer:
  """One answer being generated. `start`, `step` and `close` run on the model thread
  (`Engine.call`), one at a time.

  Args:
    engine: the shared models.
    wave: the question, float32 `[T]` at 16 kHz.
    speaker, emotion: style ids.
    seed: the sampling seed.
  """

  def __init__(self, engine: Engine, wave: np.ndarray, speaker: int, emotion: int, seed: int,
               question: QuestionStream | None = None):
    self.engine, self.wave, self.question = engine, wave, question
    self.speaker, self.emotion, self.seed = speaker, emotion, seed
    self.frames = 0  # frames generated
    self.samples = 0  # samples decoded
    self.done = False
    self.compute_seconds = 0.0  # model time spent on this answer
    self._stream = None
    self._decoder = None
    self._pending: list[np.ndarray] = []  # frames [Q] not yet decoded
    self._pushes = 0
    self._postfilter = (postfilter_lib.StreamPostfilter(engine.settings.postfilter)
                        if engine.settings.postfilter else None)

  def start(self) -> dict[str, float]:
    """Prepares and encodes the question and opens the S2S frame stream.

    Returns:
      `prepare_ms`, `encode_ms`, `question_seconds`; with a question stream also
      `s2s_encoder_ms` (the rest of the S2S encoder and the decoding state) and
      `streamed_seconds` (question audio encoded before the end of the turn).

    Raises:
      QuestionError: a silent, empty or too short question.
    """
    e, r = self.engine, self.engine.responder
    begin = time.perf_counter()
    if self.question is not None and (self.question.speaker, self.question.emotion) != (
        self.speaker, self.emotion):
      self.question.close()  # encoded in another style: encode the whole question instead
      self.question = None
    if self.question is not None:
      try:
        self.engine.responder.check(self.wave)
        timings = {"prepare_ms": _ms(begin), "question_seconds": self.wave.size / SAMPLE_RATE}
        state = self.question.finish(self.wave, self.seed, timings)
      finally:
        self.question.close()
      s = e.settings
      self._stream = generation.stream_from_state(
          e.s2s.model, e.s2s.variables, state,
          generation.Sampling.make(s.temperature, s.top_k, s.top_p), e.max_frames,
          s.frames_per_call)
      self._decoder = e.acquire_decoder()
      self.compute_seconds += time.perf_counter() - begin
      return timings
    question = r.prepare(self.wave)
    timings = {"prepare_ms": _ms(begin), "question_seconds": question.size / SAMPLE_RATE}
    stage = time.perf_counter()
    codes = r.question_codes(e.codec.encode(question[None]))
    timings["encode_ms"] = _ms(stage)
    s = e.settings
    self._stream = e.s2s.stream(codes, self.speaker, self.emotion, max_frames=e.max_frames,
                                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                seed=self.seed, frames_per_call=s.frames_per_call)
    self._decoder = e.acquire_decoder()
    self.compute_seconds += time.perf_counter() - begin
    return timings

  def step(self) -> tuple[np.ndarray, dict[str, float]]:
    """Generates the next push of frames and decodes them (the rest too at the end).

    Returns:
      `(samples, timings)`: float32 `[m]` (possibly empty: the decoder holds its lookahead
      back), and `s2s_ms`, `decode_ms`, `frames` of this step.
    """
    if self.done or self._stream is None:
      return np.zeros(0, np.float32), {"s2s_ms": 0.0, "decode_ms": 0.0, "frames": 0}
    e = self.engine
    target = e.first_push_frames if self._pushes == 0 else e.push_frames
    begin = time.perf_counter()
    count = 0
    while len(self._pending) < target:
      frame = next(self._stream, None)
      if frame is None:
        self.done = True
        break
      self._pending.append(frame[0])
      count += 1
    s2s_ms = _ms(begin)
    stage = time.perf_counter()
    parts = []
    if self._pending:
      parts.append(self._decoder.push(np.stack(self._pending, axis=1).astype(np.int32)))
      self._pushes += 1
    if self.done:
      parts.append(self._decoder.flush())
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if self._postfilter is not None:
      samples = self._postfilter.push(samples)
      if self.done:
        samples = np.concatenate([samples, self._postfilter.flush()])
    self.frames += len(self._pending)
    self._pending = []
    self.samples += samples.size
    self.compute_seconds += time.perf_counter() - begin
    return samples, {"s2s_ms": s2s_ms, "decode_ms": _ms(stage), "frames": count}

  def close(self) -> None:
    """Returns the stream decoder to the pool; the answer ends here if it has not."""
    self.done = True
    if self.question is not None:
      self.question.close()
    self._stream = None
    if self._decoder is not None:
      self.engine.release_decoder(self._decoder)
      self._decoder = None
