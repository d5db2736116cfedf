"""The voice agent (`python -m telugu_jax.serve`): a real server process on localhost with tiny
random models, driven by aiohttp WebSocket clients with real Telugu speech."""

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest

from configs import codec as codec_configs
from configs import s2s as s2s_configs
from telugu_jax import checkpoints
from telugu_jax.data import audio
from telugu_jax.models import codec as codec_lib
from telugu_jax.models.s2s import S2SConfig
from telugu_jax.serve import __main__ as serve_main
from telugu_jax.serve import vad as vad_lib
from test_respond import save_tiny_models
from test_s2s_model import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIPS = os.path.join(ROOT, "..", "shared", "data", "common-voice-te-dev")
TOKEN = "s3cret"
# Questions of 0.4 s of speech ended by silence, or 0.5 s ended by the client, fall in the 1 s
# length bucket (with 0.3 s of pre-roll, 0.2 s of tail) that the server compiles at warm-up.
VAD_SPEECH, CLIENT_SPEECH = 0.4, 0.5
MAX_SECONDS = 1.5
FRAMES = 300  # MAX_SECONDS at 200 frames/s: every answer of the endless model has this many
IDLE_SECONDS = 3.0
MAX_MESSAGE_BYTES = 65536
SILENCE_MS = 500


def save_endless_s2s(directory: str) -> str:
  """The tiny S2S model of `test_respond`, with end-of-speech made impossible (its level-0 logit
  bias at -1e4): every answer runs to the maximum length, so its size is known in advance."""
  model = {**s2s_configs.get_config("smoke").model.to_dict(), "vocab_size": 32,
           "num_quantizers": 8}
  config = S2SConfig.from_dict(model)
  _, variables = random_variables(config, seed=1)
  variables["params"]["output_heads_0"]["bias"][config.vocab_size] = -1e4
  checkpoints.save(directory, 0, variables, checkpoints.model_meta(
      "s2s", variant=config.variant, model=config.to_dict()))
  return directory


def speech(name: str, speech_seconds: float) -> np.ndarray:
  """0.5 s before the speech of a Common Voice clip, then `speech_seconds` of it, at 16 kHz."""
  path = os.path.join(CLIPS, name)
  if not os.path.isfile(path):
    pytest.skip(f"{CLIPS}: no real speech clips here")
  wave, rate = audio.read_audio(path)
  wave = audio.resample(audio.to_mono(wave), rate, 16000)
  frames = wave[:wave.size // 320 * 320].reshape(-1, 320)
  level = np.sqrt(np.mean(frames ** 2, axis=1))
  onset = int(np.argmax(level > 0.1 * level.max())) * 320
  start = max(0, onset - 8000)
  return wave[start:onset + int(speech_seconds * 16000)]


def pcm(wave: np.ndarray) -> bytes:
  return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
  return bytes(2 * int(seconds * 16000))


@contextlib.contextmanager
def running_server(directory: str, *args: str, causal: bool = False):
  """`python -m telugu_jax.serve` with the tiny codec (`causal`: the streaming one) and the
  endless S2S model on a free port, with `args`: yields (its http URL, its log file); checks a
  clean shutdown at the end."""
  codec_dir, _ = save_tiny_models(directory, causal=causal)
  s2s_dir = save_endless_s2s(os.path.join(directory, "endless"))
  log_path = os.path.join(directory, "serve.log")
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        [sys.executable, "-m", "telugu_jax.serve", f"--codec={codec_dir}", f"--s2s={s2s_dir}",
         "--port=0", f"--token={TOKEN}", f"--max_seconds={MAX_SECONDS}", *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
      match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", open(log_path).read())
      if match:
        break
      time.sleep(0.2)
    else:
      raise AssertionError(f"the server did not start:\n{open(log_path).read()}")
    yield match.group(1), log_path
  finally:
    process.terminate()
    code = process.wait(timeout=30)
  text = open(log_path).read()
  assert code == 0 and "shutting down" in text and "Traceback" not in text, text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """A server on a free port for this module's tests: (http URL, its log file)."""
  if not os.path.isdir(CLIPS):
    pytest.skip(f"{CLIPS}: no real speech clips here")
  with running_server(
      str(tmp_path_factory.mktemp("agent")), "--warmup_seconds=1", "--lead_seconds=0.5",
      f"--idle_seconds={IDLE_SECONDS}", f"--silence_ms={SILENCE_MS}",
      f"--max_message_bytes={MAX_MESSAGE_BYTES}", "--max_turn_seconds=4") as running:
    yield running


async def receive(ws, audio_chunks: list[bytes] | None = None, timeout: float = 120.0) -> dict:
  """The next JSON event; binary messages before it are appended to `audio_chunks`."""
  while True:
    msg = await ws.receive(timeout=timeout)
    if msg.type == aiohttp.WSMsgType.BINARY:
      assert audio_chunks is not None, "audio before any answer"
      audio_chunks.append(msg.data)
    elif msg.type == aiohttp.WSMsgType.TEXT:
      return json.loads(msg.data)
    else:
      raise AssertionError(f"connection ended: {msg.type} {msg.data} {msg.extra}")


async def expect(ws, *kinds: str, audio_chunks: list[bytes] | None = None) -> list[dict]:
  events = [await receive(ws, audio_chunks) for _ in kinds]
  assert [e["type"] for e in events] == list(kinds), events
  return events


async def ask(ws, question: bytes, message_bytes: int, pause: float
              ) -> tuple[list[dict], list[bytes]]:
  """Sends `question` in `message_bytes` messages `pause` seconds apart, then `end_of_turn`;
  returns the turn's four events and the answer's audio messages."""
  for i in range(0, len(question), message_bytes):
    await ws.send_bytes(question[i:i + message_bytes])
    await asyncio.sleep(pause)
  await ws.send_str(json.dumps({"type": "end_of_turn"}))
  chunks = []
  events = await expect(ws, "speech_start", "speech_end", "response_start", "response_end",
                        audio_chunks=chunks)
  return events, chunks


def connect(session: aiohttp.ClientSession, url: str, token: str = TOKEN, **kwargs):
  return session.ws_connect(f"{url}/ws?token={token}", **kwargs)


def answer_samples() -> int:
  """Samples of a full answer: the codec's decoded length of FRAMES frames."""
  return codec_lib.num_samples(FRAMES, codec_configs.get_config("smoke").codec.strides)


def check_answer(end: dict, chunks: list[bytes]) -> np.ndarray:
  """A complete answer: FRAMES frames, their decoded length in bytes and seconds, not silent."""
  samples = answer_samples()
  assert end == {"type": "response_end", "frames": FRAMES, "interrupted": False,
                 "seconds": round(samples / 16000, 4), "rtf": end["rtf"]}
  assert end["rtf"] > 0
  wave = np.frombuffer(b"".join(chunks), "<i2")
  assert wave.size == samples and np.abs(wave).max() > 100
  return wave


def test_turns_on_real_speech_by_silence_and_by_end_of_turn(server):
  url, _ = server

  async def run():
    async with aiohttp.ClientSession() as session, connect(session, url) as ws:
      ready = await receive(ws)
      assert ready["type"] == "ready" and ready["sample_rate"] == 16000
      assert ready["speakers"][2] == "female_young" and ready["emotions"][1] == "happy"

      # A turn ended by the server's VAD: the speech, then silence (sent faster than real time).
      await ws.send_bytes(pcm(speech("common_voice_te_42973996.mp3", VAD_SPEECH)))
      for _ in range(50):
        await ws.send_bytes(silence(0.02))
      chunks = []
      start, end, response, done = await expect(
          ws, "speech_start", "speech_end", "response_start", "response_end",
          audio_chunks=chunks)
      assert end["reason"] == "silence" and VAD_SPEECH < end["seconds"] <= 1.0
      assert SILENCE_MS <= end["silence_ms"] < SILENCE_MS + 100
      assert response["latency_ms"] > 0 and response["frames"] > 0
      assert set(response["budget"]) == {"queue_ms", "prepare_ms", "encode_ms", "s2s_ms",
                                          "decode_ms"}
      check_answer(done, chunks)

      # Style for the next turns; a bad one is an error event, the session goes on.
      await ws.send_str(json.dumps({"type": "config", "speaker": "female_young",
                                    "emotion": "happy"}))
      assert await receive(ws) == {"type": "config", "speaker": 2, "emotion": 1}
      await ws.send_str(json.dumps({"type": "config", "emotion": "angry"}))
      error = await receive(ws)
      assert error["type"] == "error" and "unknown emotion 'angry'" in error["message"]

      # A turn ended by the client, in real-time 20 ms chunks, while the user still speaks.
      question = pcm(speech("common_voice_te_42973997.mp3", CLIENT_SPEECH))
      (_, end, _, done), chunks = await ask(ws, question, 640, 0.02)
      assert end["reason"] == "end_of_turn" and CLIENT_SPEECH < end["seconds"] <= 1.0
      check_answer(done, chunks)

  asyncio.run(run())


def test_a_causal_codec_encodes_the_question_while_it_is_spoken(tmp_path):
  """With the causal codec the question is encoded as it arrives: at the end of the turn only
  its last pieces are left, and the answer is whole."""
  speech_seconds = 1.6
  with running_server(str(tmp_path), "--warmup_seconds=3", "--lead_seconds=0",
                      f"--silence_ms={SILENCE_MS}", "--level_seconds=0.5", "--max_turn_seconds=4",
                      causal=True) as (url, log_path):

    async def run():
      async with aiohttp.ClientSession() as session, connect(session, url) as ws:
        await receive(ws)
        question = pcm(speech("common_voice_te_42973996.mp3", speech_seconds))
        # 100 ms messages at 4x real time.
        (_, end, response, done), chunks = await ask(ws, question, 3200, 0.025)
        assert end["reason"] == "end_of_turn"
        assert 0.5 <= response["streamed_seconds"] <= end["seconds"]
        assert done["frames"] == FRAMES and not done["interrupted"]
        wave = np.frombuffer(b"".join(chunks), "<i2")
        assert wave.size == FRAMES * 80 and np.abs(wave).max() > 100  # causal: 80 samples/frame

    asyncio.run(run())
    assert "questions encoded while spoken" in open(log_path).read()


def test_the_turn_detector_tells_where_the_silence_began():
  """While the VAD hears the silence after speech, `silence_start` is where a turn ended by that
  silence ends; it is None during speech and after the turn."""
  turns = vad_lib.TurnDetector(vad_lib.SileroVAD(), vad_lib.TurnSettings(silence_ms=SILENCE_MS))
  wave = speech("common_voice_te_42973996.mp3", 1.0)
  events = turns.push(wave)
  assert [e.kind for e in events] == ["start"]
  starts = []
  for _ in range(50):  # 1 s of silence in 20 ms pieces
    events += turns.push(np.zeros(320, np.float32))
    starts.append(turns.silence_start)
    if events[-1].kind == "end":
      break
  assert events[-1].kind == "end" and turns.silence_start is None
  heard = [s for s in starts[:-1] if s is not None]
  assert heard and set(heard) == {events[-1].sample}


def test_barge_in_stops_the_answer(server):
  url, _ = server

  async def run():
    async with aiohttp.ClientSession() as session, connect(session, url) as ws:
      await expect(ws, "ready")
      await ws.send_bytes(pcm(speech("common_voice_te_42973998.mp3", CLIENT_SPEECH)))
      await ws.send_str(json.dumps({"type": "end_of_turn"}))
      chunks = []
      await expect(ws, "speech_start", "speech_end", "response_start", audio_chunks=chunks)
      # The user speaks again while the answer plays (generation runs at most 0.5 s ahead).
      await ws.send_bytes(pcm(speech("common_voice_te_42973999.mp3", VAD_SPEECH)))
      end, start = await expect(ws, "response_end", "speech_start", audio_chunks=chunks)
      assert end["interrupted"] and 0 < end["frames"] < FRAMES
      assert 0 < end["seconds"] < answer_samples() / 16000
      assert sum(map(len, chunks)) == round(end["seconds"] * 16000) * 2
      del start
      # The new turn is answered in full.
      await ws.send_bytes(silence(1.0))
      chunks = []
      events = await expect(ws, "speech_end", "response_start", "response_end",
                            audio_chunks=chunks)
      check_answer(events[-1], chunks)

  asyncio.run(run())


def test_two_sessions_answered_at_once(server):
  url, _ = server

  async def turn(session, name):
    async with connect(session, url) as ws:
      await expect(ws, "ready")
      await ws.send_bytes(pcm(speech(name, CLIENT_SPEECH)))
      await ws.send_str(json.dumps({"type": "end_of_turn"}))
      chunks, times = [], {}
      for kind in ("speech_start", "speech_end", "response_start", "response_end"):
        event = (await expect(ws, kind, audio_chunks=chunks))[0]
        times[kind] = time.perf_counter()
      check_answer(event, chunks)
      return times

  async def run():
    async with aiohttp.ClientSession() as session:
      a, b = await asyncio.gather(turn(session, "common_voice_te_42974000.mp3"),
                                  turn(session, "common_voice_te_42973996.mp3"))
    # Interleaved, not one after the other: each started before the other ended.
    assert a["response_start"] < b["response_end"] and b["response_start"] < a["response_end"]

  asyncio.run(run())


def test_bad_messages_limits_and_access(server):
  url, log_path = server

  async def run():
    async with aiohttp.ClientSession() as session:
      async with connect(session, url) as ws:
        await expect(ws, "ready")
        for bad, message in (("hello", "must be JSON"), ("[1, 2]", "unknown message"),
                             ('{"type": "shout"}', "unknown message"),
                             ('{"type": "config", "volume": 11}', "unknown keys ['volume']")):
          await ws.send_str(bad)
          event = await receive(ws)
          assert event["type"] == "error" and message in event["message"], (bad, event)
        await ws.send_bytes(b"\x01\x02\x03")
        event = await receive(ws)
        assert event["type"] == "error" and "whole int16 samples, got 3 bytes" in event["message"]
        # end_of_turn on silence only: nothing to answer.
        await ws.send_bytes(silence(0.5))
        await ws.send_str('{"type": "end_of_turn"}')
        end, error = await expect(ws, "speech_end", "error")
        assert "no speech" in error["message"]
        # Still serving this session: a config round trip.
        await ws.send_str('{"type": "config", "speaker": 1}')
        assert (await receive(ws))["speaker"] == 1
        # Too large a message: closed with 1009 (message too big).
        await ws.send_bytes(bytes(MAX_MESSAGE_BYTES + 2))
        msg = await ws.receive(timeout=30)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        del end

      # An idle session is closed with a reason.
      async with connect(session, url) as ws:
        await expect(ws, "ready")
        start = time.perf_counter()
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.extra == f"idle for {IDLE_SECONDS:g} s"
        assert time.perf_counter() - start >= IDLE_SECONDS - 0.1

      # The token and the origin.
      for token, headers, status in (("", {}, 401), ("wrong", {}, 401),
                                     (TOKEN, {"Origin": "http://evil.example"}, 403)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
          async with connect(session, url, token, headers=headers):
            pass
        assert error.value.status == status
      async with connect(session, url, headers={"Origin": url}) as ws:
        await expect(ws, "ready")

      # The page and its files are served.
      async with session.get(f"{url}/") as page:
        assert page.status == 200 and "<title>" in await page.text()
      for name in ("app.js", "style.css", "capture-worklet.js", "playback-worklet.js"):
        async with session.get(f"{url}/static/{name}") as response:
          assert response.status == 200, name

  asyncio.run(run())
  assert "malformed" not in open(log_path).read()


def test_abrupt_disconnect_mid_answer_leaves_the_server_serving(server):
  url, log_path = server

  async def run():
    async with aiohttp.ClientSession() as session:
      ws = await connect(session, url).__aenter__()
      await expect(ws, "ready")
      await ws.send_bytes(pcm(speech("common_voice_te_42973997.mp3", CLIENT_SPEECH)))
      await ws.send_str('{"type": "end_of_turn"}')
      chunks = []
      await expect(ws, "speech_start", "speech_end", "response_start", audio_chunks=chunks)
      ws._response.connection.transport.abort()  # no closing handshake
    async with aiohttp.ClientSession() as session, connect(session, url) as ws:
      await expect(ws, "ready")
      await ws.send_bytes(pcm(speech("common_voice_te_42973998.mp3", CLIENT_SPEECH)))
      await ws.send_str('{"type": "end_of_turn"}')
      chunks = []
      events = await expect(ws, "speech_start", "speech_end", "response_start", "response_end",
                            audio_chunks=chunks)
      check_answer(events[-1], chunks)

  asyncio.run(run())
  log = open(log_path).read()
  assert re.search(r"turn 1 answered: \d+ frames, [\d.]+ s of audio, RTF [\d.]+ \(interrupted\)",
                   log), log


def test_command_line_errors(tmp_path, capsys):
  assert serve_main.main([f"--codec={tmp_path / 'nowhere'}", f"--s2s={tmp_path}"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {tmp_path / 'nowhere'}: no checkpoint") and "\n" not in err
  with pytest.raises(SystemExit):
    serve_main.main(["--codec=a", "--s2s=b", "--top_p=0"])
  assert "0 < top_p <= 1" in capsys.readouterr().err
