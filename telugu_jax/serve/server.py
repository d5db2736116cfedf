"""The voice agent's web server: the page at `/`, one WebSocket session per client at `/ws`.

Protocol (README, "Voice agent"): the client sends binary little-endian int16 PCM at 16 kHz mono
(any length) and text JSON `{"type": "end_of_turn"}` or `{"type": "config", "speaker": ..,
"emotion": ..}`; the server sends text JSON events `ready`, `speech_start`, `speech_end`,
`response_start` (`latency_ms`: from the end of the user's turn to the first answer audio),
`response_end` (`frames`, `seconds`), `error` (`message`), and the answer as binary int16 PCM at
16 kHz mono, streamed as it is generated.

A turn ends when the VAD has heard `silence_ms` of silence after speech, on `end_of_turn`, or at
`max_turn_seconds`. Speech during an answer stops it (barge-in: `response_end` with
`"interrupted": true`, then `speech_start`); the page also drops the audio it still has queued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import os
import time
import urllib.parse
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from telugu_jax.data import records
from telugu_jax.inference.respond import QuestionError
from telugu_jax.serve import vad as vad_lib
from telugu_jax.serve.engine import SAMPLE_RATE, Answer, Engine, QuestionStream

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
log = logging.getLogger("telugu_jax.serve")


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-session limits and turn-taking settings.

  Attributes:
    max_message_bytes: the largest WebSocket message (larger: close 1009).
    max_turn_seconds: a turn is ended here even while the user still speaks.
    idle_seconds: a session that sends nothing this long (and is not being answered) is closed.
    max_sessions: sessions at once; more get HTTP 503.
    max_errors: malformed messages tolerated per session before it is closed (1008).
    lead_seconds: generation runs at most this far ahead of real-time playback (0: no limit),
      so sessions share the model fairly and a barge-in wastes little work.
    pre_roll_ms: audio kept before the detected start of speech.
    tail_ms: audio kept after the detected end of speech.
  """
  max_message_bytes: int = 256 * 1024
  max_turn_seconds: float = 15.0
  idle_seconds: float = 120.0
  max_sessions: int = 8
  max_errors: int = 20
  lead_seconds: float = 1.0
  pre_roll_ms: float = 300.0
  tail_ms: float = 200.0


def pcm16(samples: np.ndarray) -> bytes:
  """float32 `[n]` in [-1, 1] → little-endian int16 PCM bytes (clipped)."""
  return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def _ms(start: float) -> float:
  return round(1000.0 * (time.perf_counter() - start), 1)


class Session:
  """One client: its audio since the last turn, its turn detector and its current answer."""

  def __init__(self, app: web.Application, ws: web.WebSocketResponse, name: str):
    self.app, self.ws, self.name = app, ws, name
    self.engine: Engine = app["engine"]
    self.limits: Limits = app["limits"]
    self.turns = vad_lib.TurnDetector(app["vad"], app["turn_settings"])
    r = self.engine.responder
    self.speaker, self.emotion = r.speaker_id(app["speaker"]), r.emotion_id(app["emotion"])
    self.errors = 0
    self.turn = 0
    self.answer_task: asyncio.Task | None = None
    self._chunks: list[np.ndarray] = []  # audio since the last turn, from sample self._first
    self._first = 0
    self._buffered = 0
    self._speech_start: int | None = None  # sample where the current speech started
    # The question being encoded while it is spoken (Engine.streams_questions): its first
    # sample and the next sample to push to it.
    self._question: QuestionStream | None = None
    self._question_start = self._question_pushed = 0

  # Sending. A closed connection makes every later send a no-op.

  async def send(self, event: dict[str, Any]) -> None:
    if not self.ws.closed:
      try:
        await self.ws.send_str(json.dumps(event))
      except (ConnectionError, RuntimeError):
        pass

  async def error(self, message: str) -> None:
    self.errors += 1
    log.info("%s: error: %s", self.name, message)
    await self.send({"type": "error", "message": message})
    if self.errors >= self.limits.max_errors:
      await self.ws.close(code=WSCloseCode.POLICY_VIOLATION,
                          message=f"{self.errors} malformed messages".encode())

  # The receive loop.

  async def run(self) -> None:
    styles = self.engine.s2s.config
    await self.send({
        "type": "ready", "sample_rate": SAMPLE_RATE,
        "speakers": [n for n, i in sorted(records.SPEAKER_IDS.items(), key=lambda x: x[1])
                     if i < styles.num_speakers],
        "emotions": [n for n, i in sorted(records.EMOTION_IDS.items(), key=lambda x: x[1])
                     if i < styles.num_emotions],
        "speaker": self.speaker, "emotion": self.emotion,
        "silence_ms": self.app["turn_settings"].silence_ms,
        "max_turn_seconds": self.limits.max_turn_seconds,
        "max_message_bytes": self.limits.max_message_bytes})
    try:
      while not self.ws.closed:
        try:
          msg = await self.ws.receive(timeout=self.limits.idle_seconds)
        except asyncio.TimeoutError:
          if self.answer_task and not self.answer_task.done():
            continue
          log.info("%s: idle for %g s, closing", self.name, self.limits.idle_seconds)
          await self.ws.close(code=WSCloseCode.GOING_AWAY,
                              message=f"idle for {self.limits.idle_seconds:g} s".encode())
          break
        if msg.type == WSMsgType.BINARY:
          await self.on_audio(msg.data)
        elif msg.type == WSMsgType.TEXT:
          await self.on_text(msg.data)
        elif msg.type == WSMsgType.ERROR:
          log.info("%s: connection error: %s", self.name, msg.data)
          break
        else:  # CLOSE, CLOSING, CLOSED
          break
    finally:
      await self.stop_answer()
      self.drop_question()

  async def on_text(self, text: str) -> None:
    try:
      message = json.loads(text)
    except ValueError:
      await self.error(f"text messages must be JSON, got {text[:40]!r}")
      return
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "end_of_turn":
      await self.end_of_turn()
    elif kind == "config":
      await self.configure(message)
    else:
      await self.error(f"unknown message {text[:60]!r} (expected type 'end_of_turn' or 'config')")

  async def configure(self, message: dict[str, Any]) -> None:
    unknown = sorted(set(message) - {"type", "speaker", "emotion"})
    if unknown:
      await self.error(f"config: unknown keys {unknown} (expected 'speaker', 'emotion')")
      return
    r = self.engine.responder
    try:
      speaker = r.speaker_id(message.get("speaker", self.speaker))
      emotion = r.emotion_id(message.get("emotion", self.emotion))
    except ValueError as e:
      await self.error(f"config: {e}")
      return
    self.speaker, self.emotion = speaker, emotion
    await self.send({"type": "config", "speaker": speaker, "emotion": emotion})

  async def on_audio(self, data: bytes) -> None:
    if len(data) % 2:
      await self.error(f"binary messages must hold whole int16 samples, got {len(data)} bytes")
      return
    samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    self._chunks.append(samples)
    self._buffered += samples.size
    self._trim()
    events = await asyncio.get_running_loop().run_in_executor(
        self.app["vad_executor"], self.turns.push, samples)
    for event in events:
      if event.kind == "start":
        await self.stop_answer()  # barge-in
        self._speech_start = event.sample
        self.open_question()
        log.info("%s: speech started at %.2f s", self.name, event.sample / SAMPLE_RATE)
        await self.send({"type": "speech_start"})
      else:
        tail = int(self.limits.tail_ms * SAMPLE_RATE / 1000)
        await self.take_turn(min(event.sample + tail, self.turns.samples), "silence",
                             silence_ms=1000 * (self.turns.samples - event.sample) / SAMPLE_RATE)
    if (self._speech_start is not None and self.turns.speaking and self.turns.samples
        - self._speech_start >= self.limits.max_turn_seconds * SAMPLE_RATE):
      self.turns.end()
      await self.take_turn(self.turns.samples, "max_turn")
    self.push_question()

  def _turn_start(self) -> int:
    """The first sample of the current question: the pre-roll before the detected speech, or
    the first buffered sample."""
    start = self._speech_start - int(self.limits.pre_roll_ms * SAMPLE_RATE / 1000)
    return max(start, self._first)

  def open_question(self) -> None:
    """Starts encoding the question while it is spoken (when the engine streams questions)."""
    self.drop_question()
    if self.engine.streams_questions:
      self._question = QuestionStream(self.engine, self.speaker, self.emotion)
      self._question_start = self._question_pushed = self._turn_start()

  def push_question(self) -> None:
    """Hands the audio received since the last push to the question stream (model thread), in
    pieces of at least `push_ms`. During silence, audio past where a turn ended by that silence
    would end waits: encoding it would be undone if the turn ends."""
    if self._question is None:
      return
    limit = self.turns.samples
    silence = self.turns.silence_start
    if silence is not None:
      limit = min(limit, silence + int(self.limits.tail_ms * SAMPLE_RATE / 1000))
    if limit - self._question_pushed >= self.engine.questions.push_ms * SAMPLE_RATE / 1000:
      samples = self._audio(self._question_pushed, limit)
      self.engine.submit(self._question.push, samples)
      self._question_pushed += samples.size

  def drop_question(self) -> None:
    if self._question is not None:
      self.engine.submit(self._question.close)
      self._question = None

  async def end_of_turn(self) -> None:
    if self.turns.speaking:
      self.turns.end()
    elif self.answer_task and not self.answer_task.done():
      return  # the VAD already ended this turn: a race with the client, nothing to do
    await self.take_turn(self.turns.samples, "end_of_turn")

  def _trim(self) -> None:
    """Keeps the last `max_turn_seconds` + `pre_roll_ms` of audio: the longest question."""
    keep = int((self.limits.max_turn_seconds + self.limits.pre_roll_ms / 1000) * SAMPLE_RATE)
    while len(self._chunks) > 1 and self._buffered - self._chunks[0].size >= keep:
      self._buffered -= self._chunks[0].size
      self._first += self._chunks.pop(0).size

  def _audio(self, start: int, end: int) -> np.ndarray:
    """Buffered samples `[start, end)` (absolute indices, clipped to what is buffered)."""
    audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
    return audio[max(0, start - self._first):max(0, end - self._first)]

  async def take_turn(self, end: int, reason: str, silence_ms: float = 0.0) -> None:
    """Ends the user's turn at sample `end` and starts answering it.

    Args:
      end: the question's last sample + 1 (absolute).
      reason: "silence", "end_of_turn" or "max_turn".
      silence_ms: audio heard after the end of speech before the turn was decided.
    """
    decided = time.perf_counter()
    if self._speech_start is not None:
      start = self._turn_start()
    else:  # an explicit end of turn without detected speech: everything since the last turn
      start = self._first
    question = self._audio(start, end)
    rest = self._audio(end, self.turns.samples)
    self._chunks, self._first, self._buffered = [rest], end, rest.size
    self._speech_start = None
    stream, self._question = self._question, None
    if stream is not None and self._question_start != start:
      self.engine.submit(stream.close)  # the buffer lost the stream's start: encode it whole
      stream = None
    await self.stop_answer()
    log.info("%s: turn %d ended (%s), %.2f s of audio", self.name, self.turn + 1, reason,
             question.size / SAMPLE_RATE)
    await self.send({"type": "speech_end", "reason": reason,
                     "seconds": round(question.size / SAMPLE_RATE, 3),
                     "silence_ms": round(silence_ms, 1)})
    self.turn += 1
    self.answer_task = asyncio.create_task(self.answer(question, decided, stream))

  async def stop_answer(self) -> None:
    """Stops the answer in progress, if any (it sends `response_end` with `interrupted`)."""
    task, self.answer_task = self.answer_task, None
    if task and not task.done():
      task.cancel()
      try:
        await task
      except asyncio.CancelledError:
        pass

  async def answer(self, question: np.ndarray, decided: float,
                   stream: QuestionStream | None = None) -> None:
    """Generates and streams the answer to `question`; `decided` is when the turn ended;
    `stream` holds the question's beginning, encoded while it was spoken.

    Every turn ends in exactly one `error` (an unanswerable question) or `response_end` (with
    `interrupted` when barge-in or `end_of_turn` stopped it; `response_start` precedes it unless
    the answer was stopped before its first audio).
    """
    engine = self.engine
    answer = Answer(engine, question, self.speaker, self.emotion, seed=self.turn,
                    question=stream)
    budget: dict[str, float] = {}
    sent, first = 0, None
    interrupted = failed = False
    streamed = None
    try:
      queued = time.perf_counter()
      timings = await engine.call(answer.start)
      s2s_ms = timings.get("s2s_encoder_ms", 0.0)
      work = timings["prepare_ms"] + timings["encode_ms"] + s2s_ms
      budget.update(queue_ms=max(0.0, _ms(queued) - work), prepare_ms=timings["prepare_ms"],
                    encode_ms=timings["encode_ms"], s2s_ms=s2s_ms, decode_ms=0.0)
      streamed = timings.get("streamed_seconds")
      while not answer.done:
        samples, step = await engine.call(answer.step)
        if first is None:
          budget["s2s_ms"] += step["s2s_ms"]
          budget["decode_ms"] += step["decode_ms"]
        if samples.size == 0:
          continue
        if first is None:
          first = time.perf_counter()
          await self.start_response(decided, budget, answer.frames, streamed)
        await self.ws.send_bytes(pcm16(samples))
        sent += samples.size
        ahead = sent / SAMPLE_RATE - (time.perf_counter() - first)
        if self.limits.lead_seconds > 0 and ahead > self.limits.lead_seconds:
          await asyncio.sleep(ahead - self.limits.lead_seconds)
    except QuestionError as e:
      failed = True
      await self.send({"type": "error", "message": f"turn {self.turn}: {e}"})
      log.info("%s: turn %d not answered: %s", self.name, self.turn, e)
    except asyncio.CancelledError:
      interrupted = True
      raise
    except (ConnectionError, RuntimeError):
      interrupted = True  # the client went away mid-answer
    finally:
      engine.submit(answer.close)
      if not failed:
        if first is None and not interrupted:  # the model ended at once: an empty answer
          await self.start_response(decided, budget, 0, streamed)
        seconds = sent / SAMPLE_RATE
        rtf = answer.compute_seconds / seconds if sent else None
        await self.send({"type": "response_end", "frames": answer.frames,
                         "seconds": round(seconds, 4), "interrupted": interrupted,
                         "rtf": None if rtf is None else round(rtf, 3)})
        log.info("%s: turn %d answered: %d frames, %.2f s of audio, RTF %s%s", self.name,
                 self.turn, answer.frames, seconds, "-" if rtf is None else f"{rtf:.2f}",
                 " (interrupted)" if interrupted else "")

  async def start_response(self, decided: float, budget: dict[str, float], frames: int,
                           streamed: float | None) -> None:
    latency = _ms(decided)
    event = {"type": "response_start", "latency_ms": latency, "frames": frames,
             "budget": {k: round(v, 1) for k, v in budget.items()}}
    if streamed is not None:
      event["streamed_seconds"] = round(streamed, 3)
    await self.send(event)
    log.info("%s: answering turn %d, first audio %.0f ms after the end of the turn (%s%s)",
             self.name, self.turn, latency, ", ".join(f"{k} {v:.0f}" for k, v in budget.items()),
             "" if streamed is None else f"; {streamed:.2f} s of the question encoded during it")


def _origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
  """No Origin header (not a browser), the page's own origin, or one of `allowed`."""
  origin = request.headers.get("Origin")
  if origin is None or origin in allowed:
    return True
  return urllib.parse.urlsplit(origin).netloc == request.host


async def websocket(request: web.Request) -> web.StreamResponse:
  app = request.app
  token = app["token"]
  if token and not hmac.compare_digest(request.query.get("token", ""), token):
    raise web.HTTPUnauthorized(text="a valid ?token= is required\n")
  if not _origin_allowed(request, app["allowed_origins"]):
    raise web.HTTPForbidden(text=f"origin {request.headers.get('Origin')} not allowed\n")
  if len(app["sessions"]) >= app["limits"].max_sessions:
    raise web.HTTPServiceUnavailable(text="too many sessions, try again later\n")
  ws = web.WebSocketResponse(max_msg_size=app["limits"].max_message_bytes, compress=False,
                             heartbeat=30.0)
  await ws.prepare(request)
  app["count"] += 1
  name = f"session {app['count']} ({request.remote})"
  session = Session(app, ws, name)
  app["sessions"].add(session)
  log.info("%s: connected (%d open)", name, len(app["sessions"]))
  try:
    await session.run()
  finally:
    app["sessions"].discard(session)
    log.info("%s: closed (code %s, %d open)", name, ws.close_code, len(app["sessions"]))
  return ws


async def index(request: web.Request) -> web.StreamResponse:
  del request
  return web.FileResponse(os.path.join(STATIC, "index.html"))


def make_app(engine: Engine, *, limits: Limits = Limits(),
             turn_settings: vad_lib.TurnSettings = vad_lib.TurnSettings(),
             vad: vad_lib.SileroVAD | None = None, token: str = "",
             allowed_origins: tuple[str, ...] = (), speaker: str = "0",
             emotion: str = "neutral") -> web.Application:
  """The aiohttp application: `/` (the page), `/static/...` and `/ws`.

  Args:
    engine: the warmed-up models.
    limits: per-session limits.
    turn_settings: end-of-turn detection.
    vad: the VAD model (default: the vendored Silero model).
    token: if set, `/ws` requires `?token=` equal to it.
    allowed_origins: origins allowed besides the page's own (and clients sending none).
    speaker, emotion: each session's style until it sends a config.

  Raises:
    ValueError: an unknown default speaker or emotion.
  """
  engine.responder.speaker_id(speaker)
  engine.responder.emotion_id(emotion)
  app = web.Application()
  app.update(engine=engine, limits=limits, turn_settings=turn_settings,
             vad=vad or vad_lib.SileroVAD(), token=token, allowed_origins=allowed_origins,
             speaker=speaker, emotion=emotion, sessions=set(), count=0,
             vad_executor=concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vad"))
  app.router.add_get("/", index)
  app.router.add_get("/ws", websocket)
  app.router.add_static("/static/", STATIC)

  async def close_sessions(app: web.Application) -> None:
    for session in list(app["sessions"]):
      await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
    app["vad_executor"].shutdown(wait=False)

  app.on_shutdown.append(close_sessions)
  return app
