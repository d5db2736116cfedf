"""Serves the Telugu voice agent: a browser page at `/` and a WebSocket at `/ws`, one port.

    python -m telugu_jax.serve --codec=CODEC --s2s=S2S [--host=127.0.0.1 --port=8000 \\
        --token=SECRET --speaker=0 --emotion=neutral --silence_ms=600 --max_seconds=10]

`--codec` and `--s2s` are converted checkpoints or training workdirs (the S2S model must have
been trained on this codec's codes). Every shape a turn needs is compiled before the server
listens (`--warmup_seconds`, default the longest turn), then it prints the page's address.
Open it in a browser on the same machine (the microphone needs `localhost`/`127.0.0.1` or
HTTPS); with `--token`, open `http://HOST:PORT/?token=SECRET`. The protocol is in the README
("Voice agent").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web


def _parser() -> argparse.ArgumentParser:
  from telugu_jax.inference import postfilter as postfilter_lib

  p = argparse.ArgumentParser(prog="python -m telugu_jax.serve",
                              description=__doc__.splitlines()[0])
  p.add_argument("--codec", required=True, help="codec checkpoint or training workdir")
  p.add_argument("--s2s", required=True, help="S2S checkpoint or training workdir")
  p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine)")
  p.add_argument("--port", type=int, default=8000, help="0 = any free port")
  p.add_argument("--token", default="", help="required as ?token= on the WebSocket URL")
  p.add_argument("--allow_origin", action="append", default=[],
                 help="a browser origin allowed besides the page's own (repeatable)")
  g = p.add_argument_group("answers")
  g.add_argument("--speaker", default="0", help="default answer speaker: id or name")
  g.add_argument("--emotion", default="neutral", help="default answer emotion: id or name")
  g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  g.add_argument("--top_p", type=float, default=0.95, help="nucleus mass (1 = off)")
  g.add_argument("--top_k", type=int, default=0, help="keep the k likeliest codes (0 = all)")
  g.add_argument("--max_seconds", type=float, default=10.0, help="longest answer")
  g.add_argument("--frames_per_call", type=int, default=4, help="S2S steps per device call")
  g.add_argument("--first_push_frames", type=int, default=0,
                 help="frames in the first decoded chunk (0: decoder and post-filter lookahead "
                 "+ frames_per_call)")
  g.add_argument("--push_frames", type=int, default=0,
                 help="frames per later decoded chunk (0: 80 ms of frames)")
  g.add_argument("--postfilter", default="", type=postfilter_lib.flag,
                 help="post-filters for the answers: pitch, formant or pitch,formant (README: "
                 "\"Post-filters at decode\"; adds their lookahead to the latency)")
  g.add_argument("--warmup_seconds", type=float, default=None,
                 help="compile question lengths up to this before serving (default "
                 "--max_turn_seconds; 0 = none, compile on first use)")
  q = p.add_argument_group("questions")
  q.add_argument("--stream_question", action=argparse.BooleanOptionalAction, default=True,
                 help="encode the question while it is spoken (causal codec and fixed S2S "
                 "variant; otherwise the whole question is encoded at the end of the turn)")
  q.add_argument("--level_seconds", type=float, default=1.0,
                 help="a streamed question's level is normalised with the gains of its first "
                 "this many seconds")
  q.add_argument("--question_push_ms", type=float, default=160.0,
                 help="a streamed question goes to the models in pieces of this many ms")
  t = p.add_argument_group("turn-taking and limits")
  t.add_argument("--silence_ms", type=float, default=600.0, help="silence that ends a turn")
  t.add_argument("--min_speech_ms", type=float, default=96.0, help="speech that starts a turn")
  t.add_argument("--vad_threshold", type=float, default=0.5, help="speech probability")
  t.add_argument("--vad_release", type=float, default=0.35,
                 help="speech continues until the probability falls below this")
  t.add_argument("--max_turn_seconds", type=float, default=15.0, help="longest user turn")
  t.add_argument("--idle_seconds", type=float, default=120.0, help="close silent sessions")
  t.add_argument("--max_sessions", type=int, default=8, help="sessions at once")
  t.add_argument("--max_message_bytes", type=int, default=256 * 1024, help="largest message")
  t.add_argument("--lead_seconds", type=float, default=1.0,
                 help="generate at most this far ahead of playback (0 = no limit)")
  return p


async def _serve(app: web.Application, host: str, port: int, log: logging.Logger) -> None:
  runner = web.AppRunner(app, access_log=None, handle_signals=False)
  await runner.setup()
  site = web.TCPSite(runner, host, port)
  await site.start()
  bound_host, bound_port = runner.addresses[0][:2]
  shown = f"[{bound_host}]" if ":" in bound_host else bound_host
  log.info("listening on http://%s:%d/ (WebSocket ws://%s:%d/ws)", shown, bound_port, shown,
           bound_port)
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGINT, signal.SIGTERM):
    loop.add_signal_handler(sig, stop.set)
  try:
    await stop.wait()
  finally:
    log.info("shutting down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  log = logging.getLogger("telugu_jax.serve")
  log.setLevel(logging.INFO)

  from telugu_jax.inference import load_codec, load_s2s  # pylint: disable=import-outside-toplevel
  from telugu_jax.serve import engine as engine_lib, server, vad  # pylint: disable=import-outside-toplevel

  try:
    settings = engine_lib.GenerationSettings(
        max_seconds=args.max_seconds, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, frames_per_call=args.frames_per_call,
        first_push_frames=args.first_push_frames, push_frames=args.push_frames,
        postfilter=args.postfilter)
    turn_settings = vad.TurnSettings(threshold=args.vad_threshold, release=args.vad_release,
                                     min_speech_ms=args.min_speech_ms, silence_ms=args.silence_ms)
    limits = server.Limits(
        max_message_bytes=args.max_message_bytes, max_turn_seconds=args.max_turn_seconds,
        idle_seconds=args.idle_seconds, max_sessions=args.max_sessions,
        lead_seconds=args.lead_seconds)
    questions = engine_lib.QuestionSettings(
        stream=args.stream_question, level_seconds=args.level_seconds,
        push_ms=args.question_push_ms,
        max_seconds=args.max_turn_seconds + (limits.pre_roll_ms + limits.tail_ms) / 1000)
    if min(args.max_turn_seconds, args.idle_seconds, args.max_sessions,
           args.max_message_bytes) <= 0 or args.lead_seconds < 0:
      raise ValueError("need positive --max_turn_seconds, --idle_seconds, --max_sessions and "
                       "--max_message_bytes, and --lead_seconds >= 0")
  except ValueError as e:
    parser.error(str(e))

  try:
    log.info("loading %s and %s", args.codec, args.s2s)
    codec, s2s = load_codec(args.codec), load_s2s(args.s2s)
  except (OSError, ValueError, RuntimeError) as e:  # missing, wrong task, unreadable
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1
  try:
    engine = engine_lib.Engine(codec, s2s, settings, questions)
    app = server.make_app(engine, limits=limits, turn_settings=turn_settings, token=args.token,
                          allowed_origins=tuple(args.allow_origin), speaker=args.speaker,
                          emotion=args.emotion)
  except ValueError as e:
    print(f"error: --codec={args.codec} --s2s={args.s2s}: {e}", file=sys.stderr)
    return 1
  c = s2s.config
  log.info("models: codec %d levels x %d codes, %d samples/frame; S2S %s, %d+%d layers of %d; "
           "questions %s", codec.num_quantizers, codec.codebook_size, engine.responder.hop,
           c.variant, c.num_encoder_layers, c.num_decoder_layers, c.hidden_dim,
           "encoded while spoken" if engine.streams_questions else "encoded at the end of the turn")
  warmup = args.max_turn_seconds if args.warmup_seconds is None else args.warmup_seconds
  if warmup > 0:
    budget = engine.warm_up(warmup, log.info)
    log.info("warm budget for a %.2f s question: %s", budget.pop("question_seconds"),
             ", ".join(f"{k} {v:.0f}" for k, v in budget.items()))
  else:
    log.info("no warm-up: the first turns compile what they need")
  try:
    asyncio.run(_serve(app, args.host, args.port, log))
  except OSError as e:  # the port is taken, the address is not this machine's
    print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
    return 1
  finally:
    engine.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
