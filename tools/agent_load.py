"""Load test of the voice agent: clients that speak a real clip in real time and wait for the answer.

    python tools/agent_load.py --url=ws://127.0.0.1:8000/ws --clients=4 --clip=question.mp3 \\
        [--turns=3 --end=explicit --token=SECRET --stagger=0]
    # Random full-size checkpoints to measure speed with (no training needed):
    python tools/agent_load.py --save_random_models=/tmp/full [--codec_config=lowrate_streaming]

Each client streams the clip (any format, resampled to 16 kHz) in 20 ms chunks at real-time pace,
then, with `--end=explicit`, sends `end_of_turn` right after the clip's last speech (trailing
silence cut); with `--end=vad` it keeps streaming the clip and silence and lets the server's VAD
end the turn. It keeps sending silence in real time while the answer streams, like an open
microphone. For every turn it measures:

- first-audio latency: from the end of the user's speech (the `end_of_turn` message, or the
  clip's last speech sample with `--end=vad`, so the VAD's silence timeout is included) to the
  first answer audio received, next to the server's own `latency_ms` and budget;
- the server's generation real-time factor (`rtf`: model time / answer duration; < 1 is faster
  than real time);
- underruns: playback is simulated in real time from the first audio (after `--prebuffer_ms`);
  each time a sample is due before it arrived is an underrun, and playback waits for it.

The summary gives p50/p95 first-audio latency over all turns, and the clients that were served in
real time (no underrun in any turn).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RATE = 16000
CHUNK = 320  # 20 ms


@dataclasses.dataclass
class Turn:
  latency_ms: float = float("nan")  # end of speech -> first audio, measured here
  server_latency_ms: float = float("nan")
  budget: dict = dataclasses.field(default_factory=dict)
  seconds: float = 0.0
  frames: int = 0
  rtf: float = float("nan")
  underruns: int = 0
  stall_ms: float = 0.0
  error: str = ""


class Playback:
  """Real-time playback simulated from the arrival times of the answer's chunks."""

  def __init__(self, prebuffer_ms: float):
    self.prebuffer = prebuffer_ms / 1000
    self.start = None  # when sample 0 plays
    self.samples = 0
    self.underruns = 0
    self.stall = 0.0

  def arrive(self, now: float, count: int) -> None:
    if self.start is None:
      self.start = now + self.prebuffer
    due = self.start + self.samples / RATE
    if now > due:  # the sample was due before it arrived: playback waited for it
      self.underruns += 1
      self.stall += now - due
      self.start += now - due
    self.samples += count


def speech_end(wave: np.ndarray) -> int:
  """The sample after the clip's last speech, by the server's own VAD model (the end of the last
  32 ms window with a speech probability of 0.5 or more)."""
  from telugu_jax.serve import vad  # pylint: disable=import-outside-toplevel
  model = vad.SileroVAD()
  state, context, last = model.initial_state(), np.zeros(vad.CONTEXT, np.float32), 0
  for i in range(wave.size // vad.WINDOW):
    window = wave[i * vad.WINDOW:(i + 1) * vad.WINDOW]
    probability, state = model.run(np.concatenate([context, window]), state)
    context = window[-vad.CONTEXT:]
    if probability >= 0.5:
      last = i + 1
  return last * vad.WINDOW if last else wave.size


async def client(index: int, args, clip: np.ndarray, end: int, results: list[list[Turn]]
                 ) -> None:
  import aiohttp  # pylint: disable=import-outside-toplevel
  url = args.url + (f"?token={args.token}" if args.token else "")
  pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2")
  speech = pcm[:end] if args.end == "explicit" else pcm
  silence = np.zeros(CHUNK, "<i2").tobytes()
  turns: list[Turn] = []
  results[index] = turns
  await asyncio.sleep(random.Random(index).uniform(0, args.stagger))
  async with aiohttp.ClientSession() as session:
    async with session.ws_connect(url, max_msg_size=0) as ws:
      ready = json.loads((await ws.receive(timeout=60)).data)
      assert ready["type"] == "ready", ready
      for _ in range(args.turns):
        turn = Turn()
        turns.append(turn)
        done = asyncio.Event()
        marks = {}

        async def speak():
          start = time.perf_counter()
          chunks = [speech[i:i + CHUNK].tobytes() for i in range(0, speech.size, CHUNK)]
          for i, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, start + i * CHUNK / RATE - time.perf_counter()))
            await ws.send_bytes(chunk)
            if args.end == "vad" and (i + 1) * CHUNK >= end and "end" not in marks:
              marks["end"] = time.perf_counter()
          if args.end == "explicit":
            await ws.send_str(json.dumps({"type": "end_of_turn"}))
            marks["end"] = time.perf_counter()
          i = len(chunks)
          while not done.is_set():  # an open microphone: silence in real time
            await asyncio.sleep(max(0.0, start + i * CHUNK / RATE - time.perf_counter()))
            await ws.send_bytes(silence)
            i += 1

        speaker = asyncio.create_task(speak())
        playback = Playback(args.prebuffer_ms)
        try:
          while True:
            msg = await ws.receive(timeout=args.timeout)
            now = time.perf_counter()
            if msg.type == aiohttp.WSMsgType.BINARY:
              if playback.start is None:
                marks["first"] = now
              playback.arrive(now, len(msg.data) // 2)
            elif msg.type == aiohttp.WSMsgType.TEXT:
              event = json.loads(msg.data)
              if event["type"] == "response_start":
                turn.server_latency_ms = event["latency_ms"]
                turn.budget = event.get("budget", {})
              elif event["type"] == "response_end":
                turn.seconds, turn.frames = event["seconds"], event["frames"]
                turn.rtf = event["rtf"] if event["rtf"] is not None else float("nan")
                break
              elif event["type"] == "error":
                turn.error = event["message"]
                break
            else:
              turn.error = f"connection ended ({msg.type.name})"
              break
        finally:
          done.set()
          await speaker
        turn.underruns, turn.stall_ms = playback.underruns, 1000 * playback.stall
        if "first" in marks and "end" in marks:
          turn.latency_ms = 1000 * (marks["first"] - marks["end"])
        # Let the answer finish playing before the next question.
        if playback.start is not None:
          await asyncio.sleep(max(0.0, playback.start + playback.samples / RATE
                                  - time.perf_counter()))


def _percentile(values: list[float], q: float) -> float:
  values = [v for v in values if v == v]
  return float(np.percentile(values, q)) if values else float("nan")


def report(results: list[list[Turn]]) -> str:
  lines = []
  for i, turns in enumerate(results):
    for j, t in enumerate(turns):
      budget = ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in t.budget.items())
      lines.append(
          f"client {i} turn {j}: " + (f"error: {t.error}" if t.error else
          f"first audio {t.latency_ms:.0f} ms (server {t.server_latency_ms:.0f} ms: {budget}) | "
          f"answer {t.seconds:.2f} s, {t.frames} frames, RTF {t.rtf:.2f} | underruns "
          f"{t.underruns} ({t.stall_ms:.0f} ms stalled)"))
  turns = [t for ts in results for t in ts if not t.error]
  latencies = [t.latency_ms for t in turns]
  in_real_time = sum(all(t.underruns == 0 and not t.error for t in ts) and bool(ts)
                     for ts in results)
  lines.append(
      f"{len(results)} clients, {len(turns)} answered turns: first audio p50 "
      f"{_percentile(latencies, 50):.0f} ms, p95 {_percentile(latencies, 95):.0f} ms | server "
      f"p50 {_percentile([t.server_latency_ms for t in turns], 50):.0f} ms | RTF p50 "
      f"{_percentile([t.rtf for t in turns], 50):.2f}, max "
      f"{max([t.rtf for t in turns if t.rtf == t.rtf], default=float('nan')):.2f} | underruns "
      f"{sum(t.underruns for t in turns)} | clients served in real time: {in_real_time} of "
      f"{len(results)}")
  return "\n".join(lines)


def save_random_models(directory: str, codec_config: str) -> None:
  """Full-size random checkpoints: a `configs/codec.py` codec (`codec_config`: "" for the
  default, the faithful codec; `streaming` or `lowrate_streaming` for causal ones) and the
  `configs/s2s.py:pretrain` model (its code vocabulary and levels set to the codec's), in
  `directory/codec` and `directory/s2s`. Weights are drawn in the shapes `init` gives (no
  compilation); for speed measurements only."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from configs import codec as codec_configs  # pylint: disable=import-outside-toplevel
  from configs import s2s as s2s_configs  # pylint: disable=import-outside-toplevel
  from telugu_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from telugu_jax.models.codec import Codec  # pylint: disable=import-outside-toplevel
  from telugu_jax.models.s2s import S2SConfig, S2STransformer  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['alpha']") or name.endswith("_scale']") or name.endswith("['scale']"):
      return np.ones(leaf.shape, leaf.dtype)
    if name.endswith("['var']"):
      return np.ones(leaf.shape, leaf.dtype)
    if name.endswith("['bias']") or name.endswith("['mean']"):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  codec = codec_configs.get_config(codec_config or None).codec.to_dict()
  shapes = jax.eval_shape(Codec(**codec).init, jax.random.key(0), jnp.zeros((1, 4000)))
  checkpoints.save(os.path.join(directory, "codec"), 0,
                   {"gen": jax.tree_util.tree_map_with_path(draw, shapes)},
                   checkpoints.model_meta("codec", codec=codec))
  config = S2SConfig.from_dict({**s2s_configs.get_config("pretrain").model.to_dict(),
                                "num_quantizers": codec["num_quantizers"],
                                "vocab_size": codec["codebook_size"]})
  codes = jnp.zeros((1, config.num_quantizers, 4), jnp.int32)
  ids = jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(S2STransformer(config).init, jax.random.key(0), codes, codes, ids, ids)
  checkpoints.save(os.path.join(directory, "s2s"), 0,
                   jax.tree_util.tree_map_with_path(draw, shapes),
                   checkpoints.model_meta("s2s", variant=config.variant, model=config.to_dict()))
  print(f"saved random full-size models in {directory}/codec and {directory}/s2s")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--url", default="ws://127.0.0.1:8000/ws")
  parser.add_argument("--token", default="")
  parser.add_argument("--clients", type=int, default=1)
  parser.add_argument("--clip", help="the question: an audio file")
  parser.add_argument("--turns", type=int, default=1, help="questions per client")
  parser.add_argument("--end", choices=("explicit", "vad"), default="explicit",
                      help="end the turn with end_of_turn, or let the server's VAD end it")
  parser.add_argument("--stagger", type=float, default=0.0,
                      help="clients start at random times within this many seconds")
  parser.add_argument("--prebuffer_ms", type=float, default=0.0,
                      help="simulated playback starts this long after the first audio")
  parser.add_argument("--timeout", type=float, default=120.0, help="seconds without a message")
  parser.add_argument("--save_random_models", metavar="DIR",
                      help="only write random full-size checkpoints to DIR")
  parser.add_argument("--codec_config", default="",
                      help="with --save_random_models: a configs/codec.py variant (default: the "
                      "faithful codec; lowrate_streaming: the causal 50 Hz codec)")
  args = parser.parse_args(argv)
  if args.save_random_models:
    save_random_models(args.save_random_models, args.codec_config)
    return 0
  if not args.clip or args.clients < 1 or args.turns < 1:
    parser.error("need --clip, --clients >= 1 and --turns >= 1")

  from telugu_jax.data import audio  # pylint: disable=import-outside-toplevel
  try:
    wave, rate = audio.read_audio(args.clip)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  clip = audio.resample(audio.to_mono(wave), rate, RATE).astype(np.float32)
  end = speech_end(clip)
  print(f"{args.clients} clients x {args.turns} turns of {args.clip} ({end / RATE:.2f} s to the "
        f"end of speech, turn ended by {args.end}) against {args.url}", flush=True)
  results: list[list[Turn]] = [[] for _ in range(args.clients)]

  async def run():
    await asyncio.gather(*(client(i, args, clip, end, results) for i in range(args.clients)))

  try:
    asyncio.run(run())
  except (OSError, asyncio.TimeoutError) as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    print(report(results))
    return 1
  print(report(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
