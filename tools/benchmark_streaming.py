"""Streaming codec speed and the faithful windowed decoder's error, batch 1, on this machine.

    python tools/benchmark_streaming.py                    # full-size codecs, random weights
    python tools/benchmark_streaming.py --faithful=converted/ --contexts=0,16,64,200

Measures, for one voice-agent session (batch 1) and the full-size codec (`configs/codec.py`
sizes; random weights unless `--causal`/`--faithful` name checkpoints, which changes no cost):
- the causal codec (`configs/codec.py:streaming`): the cost of one `push` of a `--chunk_ms` chunk
  (20 ms: 320 samples, 4 frames; and 80 ms) to the stream encoder and of its codes to the
  stream decoder, median and p95 over the pushes of real speech, the first push (compilation)
  apart, and the real-time factor (cost / chunk duration); the algorithmic latency;
- the faithful codec's windowed decoder (`WindowedDecoder`) for each `--contexts` left context
  and `--window_push_ms` push size: the cost per push and its error against the full `decode`
  of the same codes (max abs, SNR), on the codes of real speech (`--clips`, the evaluation
  clips; `--seconds` of each);
- the machine's load average before and after (`os.getloadavg()`).
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CLIPS = ROOT.parent / "shared" / "data" / "common-voice-te-dev"


def load() -> str:
  return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed_pushes(push, chunks) -> tuple[float, np.ndarray, list]:
  """`(first call's seconds, the other calls' seconds, outputs)`."""
  times, outputs = [], []
  for chunk in chunks:
    start = time.perf_counter()
    outputs.append(push(chunk))
    times.append(time.perf_counter() - start)
  return times[0], np.array(times[1:]), outputs


def summary(times: np.ndarray, chunk_s: float) -> str:
  median, p95 = np.median(times), np.percentile(times, 95)
  return (f"median {1e3 * median:7.2f} ms  p95 {1e3 * p95:7.2f} ms  "
          f"real-time factor {median / chunk_s:.3f} (p95 {p95 / chunk_s:.3f})")


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
  error = np.sum((reference - estimate) ** 2)
  return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference ** 2) / error))


def build(path: str | None, causal: bool, config: str, variables=None):
  """A loaded checkpoint, or the full-size `configs/codec.py:config` codec (with `variables`,
  or freshly initialised)."""
  import jax
  import jax.numpy as jnp

  from configs import codec as codec_configs
  from telugu_jax.inference import codec as inference_codec
  from telugu_jax.models.codec import Codec

  if path:
    codec = inference_codec.load_codec(path)
    if codec.model.causal != causal:
      sys.exit(f"{path}: {'a faithful' if causal else 'a causal'} codec, expected "
               f"{'a causal' if causal else 'a faithful'} one")
    return codec
  kwargs = {**codec_configs.get_config(config or None).codec.to_dict(), "causal": causal}
  if variables is None:
    variables = jax.jit(Codec(**kwargs).init)(jax.random.key(0), jnp.zeros((1, 800)))
  return inference_codec.CodecModel(kwargs, variables)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--causal", default="", help="causal codec checkpoint (default: random)")
  parser.add_argument("--faithful", default="", help="faithful codec checkpoint (default: random)")
  parser.add_argument("--codec_config", default="",
                      help="configs/codec.py variant of the random codecs (default: the "
                      "original sizes; lowrate: the 50 Hz codec)")
  parser.add_argument("--clips", default=str(DEFAULT_CLIPS), help="folder of real speech")
  parser.add_argument("--num_clips", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=4.0, help="seconds of each clip")
  parser.add_argument("--chunk_ms", default="20,80",
                      help="chunk sizes (ms) pushed to the causal codec's stream encoder")
  parser.add_argument("--contexts", default="0,8,16,32,64,128",
                      help="left contexts (frames) of the windowed decoder")
  parser.add_argument("--window_push_ms", default="20,100",
                      help="codes pushed at a time to the windowed decoder (ms of audio)")
  args = parser.parse_args()

  from telugu_jax.data import audio

  print(load(), flush=True)
  paths = sorted(glob.glob(os.path.join(args.clips, "*.mp3")) +
                 glob.glob(os.path.join(args.clips, "*.wav")))[:args.num_clips]
  if not paths:
    sys.exit(f"{args.clips}: no .mp3/.wav clips")
  clips = [audio.normalize_rms(audio.load_audio(p)[:int(args.seconds * 16000)]) for p in paths]
  print(f"{len(clips)} clips, {sum(c.size for c in clips) / 16000:.1f} s of real speech",
        flush=True)

  start = time.perf_counter()
  causal = build(args.causal, True, args.codec_config)
  print(f"causal codec ready in {time.perf_counter() - start:.1f} s "
        f"({'checkpoint' if args.causal else 'random weights, full size'})", flush=True)
  hop = causal.num_samples(1)

  # --- causal codec: exact streaming --------------------------------------------------------
  enc, dec = causal.stream_encoder(), causal.stream_decoder()
  for chunk_ms in [float(c) for c in args.chunk_ms.split(",")]:
    chunk = max(1, int(round(chunk_ms * 16)) // hop) * hop
    chunk_s = chunk / 16000
    print(f"chunk {chunk} samples = {chunk // hop} frames = {1e3 * chunk_s:.1f} ms", flush=True)
    enc_times, dec_times, enc_first, dec_first = [], [], [], []
    for wave in clips:
      pieces = [wave[i:i + chunk] for i in range(0, wave.size - chunk + 1, chunk)]
      first, times, codes = timed_pushes(enc.push, pieces)
      enc_first.append(first)
      enc_times.append(times)
      first, times, _ = timed_pushes(dec.push, codes)
      dec_first.append(first)
      dec_times.append(times)
      enc.reset()
      dec.reset()
    for name, first, times in (("encode", enc_first, enc_times), ("decode", dec_first, dec_times)):
      print(f"  causal {name} push: first {first[0]:.2f} s (compiles; later clips' first "
            f"{1e3 * float(np.median(first[1:] or [np.nan])):.1f} ms), then "
            f"{summary(np.concatenate(times), chunk_s)}")
    both = np.concatenate(enc_times) + np.concatenate(dec_times)
    print(f"  causal encode + decode per chunk: {summary(both, chunk_s)}", flush=True)
  print(f"algorithmic latency: encoder {enc.latency_samples} samples "
        f"({enc.latency_samples / 16:.2f} ms: a frame waits for its last sample) + decoder "
        f"{dec.latency_samples} samples = {(enc.latency_samples + dec.latency_samples) / 16:.2f} "
        f"ms; a server's chunking adds up to one chunk", flush=True)

  # --- faithful codec: windowed decoding ----------------------------------------------------
  if not args.contexts:
    print(load())
    return
  faithful = build(args.faithful, False, args.codec_config,
                   None if args.faithful else causal.variables)
  print(f"faithful codec: {'checkpoint' if args.faithful else 'the same random weights'}; "
        f"decoder lookahead {faithful.stream_decoder().latency_samples} samples", flush=True)
  codes = [faithful.encode(wave)[0] for wave in clips]
  fulls = [faithful.decode(c[None])[0] for c in codes]
  print("push | left context | first pass (compiles) | cost per push "
        "| max abs err | SNR vs full decode: mean (min)")
  for push_ms in [float(c) for c in args.window_push_ms.split(",")]:
    frames = max(1, int(round(push_ms * 16)) // hop)
    push_s = frames * hop / 16000
    for context in [int(c) for c in args.contexts.split(",")]:
      dec = faithful.stream_decoder(left_context=context)
      chunks = [[c[:, i:i + frames] for i in range(0, c.shape[1], frames)] for c in codes]
      start = time.perf_counter()  # a first pass compiles every window size a clip needs
      timed_pushes(dec.push, chunks[0])
      dec.flush()
      compile_s = time.perf_counter() - start
      times, errors, snrs = [], [], []
      for pieces, full in zip(chunks, fulls):
        first, t, out = timed_pushes(dec.push, pieces)
        times.append([first, *t])
        streamed = np.concatenate(out + [dec.flush()])
        errors.append(float(np.max(np.abs(streamed - full))))
        snrs.append(snr_db(full, streamed))
      print(f"{1e3 * push_s:4.0f} ms | {context:4d} frames ({context * hop / 16:5.0f} ms) | "
            f"{compile_s:6.2f} s | {summary(np.concatenate(times), push_s)} | "
            f"{max(errors):.4f} | {np.mean(snrs):6.2f} dB ({np.min(snrs):.2f})", flush=True)
  print(load())


if __name__ == "__main__":
  main()
