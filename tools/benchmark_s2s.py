"""Benchmarks the S2S transformer on this machine: JAX against the PyTorch reference.

    python tools/benchmark_s2s.py [--frames=400] [--context=200] [--repeats=3] [--skip_torch]
                                  [--skip_training] [--skip_long_context]

Full size (6 + 6 layers, hidden 512), batch 1, `--context` input frames. One set of random
weights, made by the PyTorch reference of the original (`tests/s2s_torch_reference.py`) and
converted to both variants; for timing, the fixed variant's end-of-speech class is switched off
(its output bias set to -1e9) so that every run generates `--frames` frames.

- The floor: the decoder's weight matrices applied to one frame (what every generated frame
  reads), in float32 and in bfloat16, against the memory bandwidth (a measured streaming read,
  and the 25 GB/s nominal figure).
- Generation: frames per second of `generate` (one compiled `lax.while_loop`; with the encoding
  of the input and without it) and of the Python `stream` generator (4 and 8 frames per device
  call), nucleus sampling at the original's settings, with the decoder bytes read per second; and the
  original's per-frame PyTorch loop
  (`S2STransformer.generate` of the reference, `torch.cat` KV cache) with 1 and 2 threads.
- Training: the trainer's step (`telugu_jax.train.s2s.make_train_step`, jitted with the state
  donated: forward, masked cross-entropy, backward, clipping, AdamW) at batch 4 x (200 input,
  200 target frames), dropout 0.1, for the original variant (`configs/s2s.py:original`) and the
  fixed one (`configs/s2s.py:pretrain`, delay pattern on), both from the converted weights,
  and the original one with `skip_unread_encoder` (no encoder pass: the same parameters, only
  the encoder's BatchNorm statistics not updated), beside the PyTorch reference's step (2
  threads); with the FLOP/s of each JAX step (XLA's cost analysis of the compiled step) against
  a float32 matmul's.
- Long context: a 60 s input (12,000 frames) encoded by the streaming encoder and a KV cache for
  12,000 frames: KV-cache bytes, frames/s, and that the decoding call compiles once.

The CPU is shared with other work: every timing is the best of `--repeats`, and the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmark_codec import matmul_ceiling_gflops  # noqa: E402
from configs import s2s as s2s_configs  # noqa: E402
from telugu_jax.convert.s2s import convert_s2s_state_dict  # noqa: E402
from telugu_jax.inference import generation  # noqa: E402
from telugu_jax.models.s2s import S2SConfig, S2STransformer  # noqa: E402
from telugu_jax.train import s2s as trainer  # noqa: E402

NOMINAL_BANDWIDTH = 25e9  # bytes/s, the figure the generation target was sized with
ORIGINAL_SAMPLING = dict(temperature=0.8, top_k=0, top_p=0.95)
TRAIN_BATCH, TRAIN_FRAMES = 4, 200
# The `configs/s2s.py` variant each model variant trains with (the fixed one: stage 1, full size).
TRAIN_CONFIGS = {"original": "original", "fixed": "pretrain"}


def best_time(fn, repeats: int) -> float:
  """Best wall time of `fn()` over `repeats` runs, after one warm-up run."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def load() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def read_bandwidth(repeats: int) -> float:
  """Bytes/s of a jitted sum over a 512 MB float32 array (a streaming read from memory)."""
  x = jnp.ones((128, 1024, 1024), jnp.float32)
  total = jax.jit(jnp.sum)
  return x.nbytes / best_time(lambda: total(x).block_until_ready(), repeats)


def decoder_matrices(params) -> list[jax.Array]:
  """The weight matrices one decoding step reads: the decoder layers' (without the
  cross-attention keys and values, computed once from the encoder output) and the output heads."""
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if leaf.ndim == 2 and re.search(r"decoder_layers|output_heads", jax.tree_util.keystr(path))
          and not re.search(r"cross_attn'\]\['qkv'\]\['[kv]'", jax.tree_util.keystr(path))]


def decoder_bytes_per_frame(params) -> int:
  return sum(m.nbytes for m in decoder_matrices(params))


def matvec_floor(params, dtype, repeats: int) -> float:
  """Seconds per frame to multiply one activation vector by every decoder matrix in `dtype`
  (float32 accumulation), 100 frames in one compiled loop."""
  matrices = [m.astype(dtype) for m in decoder_matrices(params)]

  @jax.jit
  def frames(x, matrices):
    def frame(_, x):
      total = x
      for m in matrices:
        y = jnp.dot(jnp.resize(x, (1, m.shape[0])).astype(dtype), m,
                    preferred_element_type=jnp.float32)
        total = total + 1e-3 * y[:, :x.shape[1]]
      return jnp.tanh(total)
    return jax.lax.fori_loop(0, 100, frame, x)

  x = jnp.ones((1, 512), jnp.float32)
  return best_time(lambda: frames(x, matrices).block_until_ready(), repeats) / 100


def jax_generation(config: S2SConfig, variables, inputs, frames: int, repeats: int, label: str,
                   bandwidth: float) -> None:
  model = S2STransformer(config)
  if not config.is_original:
    head = variables["params"]["output_heads_0"]
    head = {**head, "bias": head["bias"].at[config.eos_id].set(-1e9)}
    variables = {**variables, "params": {**variables["params"], "output_heads_0": head}}
  speaker = jnp.zeros(inputs.shape[0], jnp.int32)
  sampling = generation.Sampling.make(**ORIGINAL_SAMPLING)
  produced = {}

  def run():
    codes, lengths = generation.generate(model, variables, inputs, speaker, speaker, sampling,
                                         jnp.int32(0), max_frames=frames)
    produced["frames"] = int(np.sum(lengths))

  def run_encoding():
    jax.block_until_ready(generation.init_state(model, variables, inputs, speaker, speaker,
                                                jnp.int32(0), max_frames=frames))

  seconds = best_time(run, repeats)
  encoding = best_time(run_encoding, repeats)
  fps = produced["frames"] / seconds
  decoding_fps = produced["frames"] / (seconds - encoding)
  rate = decoder_bytes_per_frame(variables["params"]) * decoding_fps
  print(f"  JAX {label:8s} generate: {fps:6.1f} frames/s ({produced['frames']} frames, encoding "
        f"included); encoding the input {encoding * 1e3:.0f} ms, then decoding "
        f"{decoding_fps:.1f} frames/s with the decoder weights read at {rate / 1e9:4.1f} GB/s = "
        f"{rate / bandwidth:4.0%} of the measured bandwidth, {rate / NOMINAL_BANDWIDTH:4.0%} of "
        "25 GB/s", flush=True)

  for frames_per_call in (4, 8):
    def run_stream():
      produced["stream"] = sum(1 for _ in generation.stream(
          model, variables, inputs, speaker, speaker, sampling, jnp.int32(0), max_frames=frames,
          frames_per_call=frames_per_call))

    seconds = best_time(run_stream, repeats)
    print(f"  JAX {label:8s} stream:   {produced['stream'] / seconds:6.1f} frames/s (encoding "
          f"included), {frames_per_call} frames per call", flush=True)


def torch_generation(model, inputs: np.ndarray, frames: int, repeats: int) -> None:
  import torch

  args = (torch.as_tensor(inputs), torch.zeros(inputs.shape[0], dtype=torch.long),
          torch.zeros(inputs.shape[0], dtype=torch.long))
  sampling = {k: v for k, v in ORIGINAL_SAMPLING.items() if k != "top_k"}
  for threads in (1, 2):
    torch.set_num_threads(threads)
    with torch.no_grad():
      seconds = best_time(lambda: model.generate(*args, frames, **sampling), repeats)
    print(f"  PyTorch reference (original), per-frame loop, {threads} thread(s): "
          f"{frames / seconds:6.1f} frames/s", flush=True)


def training_batch(rng: np.random.Generator, batch: int, frames: int) -> dict[str, np.ndarray]:
  """A trainer batch of random codes: `batch` pairs of `frames` question and answer frames."""
  codes = lambda: rng.integers(0, 1024, (batch, 8, frames)).astype(np.int32)
  lengths = np.full((batch,), frames, np.int32)
  return {"question": codes(), "question_lengths": lengths, "answer": codes(),
          "answer_lengths": lengths, "speaker": rng.integers(0, 4, batch).astype(np.int32),
          "emotion": rng.integers(0, 9, batch).astype(np.int32)}


def jax_training(config_name: str, model_config: S2SConfig, variables, batch: dict,
                 **overrides):
  """The trainer's step (`configs/s2s.py:config_name`, with `overrides` of its top-level fields)
  on the converted weights.

  Returns `(step, flops)`: a function running one step on the held state (jitted with the state
  donated, compiled here) and the FLOPs of the compiled step (XLA's cost analysis).
  """
  config = s2s_configs.get_config(config_name)
  config.update(overrides)
  wanted = trainer.model_config(config)
  if dataclasses.replace(model_config, delays=wanted.delays, dropout=wanted.dropout) != wanted:
    raise ValueError(f"configs/s2s.py:{config_name} does not match the converted weights")
  params = jax.tree.map(jnp.array, variables["params"])  # copies: the step donates its state
  state = {"params": params, "batch_stats": jax.tree.map(jnp.array, variables["batch_stats"]),
           "opt": trainer.make_optimizer(config, params).init(params),
           "step": jnp.zeros((), jnp.int32)}
  batch = jax.device_put(batch)
  compiled = jax.jit(trainer.make_train_step(config, params), donate_argnums=0).lower(
      state, batch).compile()
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))

  return step, compiled.cost_analysis()["flops"]


def torch_training_step(model, batch: dict):
  """One step of the PyTorch reference (original variant): forward, cross-entropy, AdamW."""
  import torch

  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  inputs, targets, speaker, emotion = (torch.as_tensor(batch[k]).long() for k in (
      "question", "answer", "speaker", "emotion"))

  def step():
    logits, _ = model(inputs, targets, speaker, emotion)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), targets.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  return step


def training(variants, torch_model, repeats: int) -> None:
  """Times the training steps round-robin (one step of each per round, best of `repeats` rounds
  after a warm-up round), so that a change of load affects them alike."""
  import torch

  batch = training_batch(np.random.default_rng(1), TRAIN_BATCH, TRAIN_FRAMES)
  ceiling = matmul_ceiling_gflops() * 1e9
  print(f"training step (the trainer's jitted `train_step`, state donated), batch {TRAIN_BATCH} x "
        f"({TRAIN_FRAMES} input, {TRAIN_FRAMES} target frames), dropout 0.1; float32 matmul "
        f"ceiling (jitted 2048 x 2048 x 2048): {ceiling / 1e9:.0f} GFLOP/s", flush=True)
  steps, flops = {}, {}
  for variant, config_name in TRAIN_CONFIGS.items():
    name = f"JAX {variant}"
    steps[name], flops[name] = jax_training(config_name, *variants[variant], batch)
  skipping = "JAX original, skip_unread_encoder"
  steps[skipping], flops[skipping] = jax_training("original", *variants["original"], batch,
                                                  skip_unread_encoder=True)
  if torch_model is not None:
    torch.set_num_threads(2)
    steps["PyTorch original, 2 threads"] = torch_training_step(torch_model, batch)
  times = {name: [] for name in steps}
  for _ in range(repeats + 1):
    for name, step in steps.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  best = {name: min(t[1:]) for name, t in times.items()}
  for name, seconds in best.items():
    line = (f"  {name:28s} {seconds * 1e3:6.0f} ms/step (median "
            f"{np.median(times[name][1:]) * 1e3:.0f})")
    if name in flops:
      rate = flops[name] / seconds
      line += (f", {flops[name] / 1e9:.0f} GFLOP/step at {rate / 1e9:.1f} GFLOP/s = "
               f"{rate / ceiling:.0%} of the ceiling")
    print(line, flush=True)
  if torch_model is not None:
    torch_model.eval()
    for name in ("JAX original", skipping):
      print(f"  {name} throughput / PyTorch: "
            f"{best['PyTorch original, 2 threads'] / best[name]:.2f}x", flush=True)
  print(f"  JAX fixed step / JAX original step: {best['JAX fixed'] / best['JAX original']:.2f}x",
        flush=True)


def long_context(config: S2SConfig, variables, frames: int) -> None:
  model = S2STransformer(config)
  inputs = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (1, 8, 12_000)))
  speaker = jnp.zeros(1, jnp.int32)
  sampling = generation.Sampling.make(**ORIGINAL_SAMPLING)
  start = time.perf_counter()
  state = generation.init_state(model, variables, inputs, speaker, speaker, jnp.int32(0),
                                max_frames=12_000)
  state["index"].block_until_ready()
  encode_seconds = time.perf_counter() - start
  cache_bytes = sum(x.nbytes for x in jax.tree.leaves(state["cache"]))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  print(f"  60 s input (12,000 frames) encoded chunk by chunk in {encode_seconds:.1f} s "
        f"(compilation included); KV cache for 12,000 frames: {cache_bytes / 2**20:.0f} MiB "
        f"(whole decoding state {state_bytes / 2**20:.0f} MiB)", flush=True)
  del state
  stream = generation.stream(model, variables, inputs, speaker, speaker, sampling, jnp.int32(0),
                             max_frames=12_000)
  next(stream)
  compiled = generation.advance._cache_size()
  start = time.perf_counter()
  for _ in range(frames):
    next(stream)
  seconds = time.perf_counter() - start
  stream.close()
  print(f"  streaming with a 12,000-frame cache: {frames / seconds:.1f} frames/s over {frames} "
        f"frames; decoding-call compilations {compiled} -> {generation.advance._cache_size()}",
        flush=True)


def generation_benchmarks(variants, torch_model, inputs: np.ndarray, args) -> None:
  bandwidth = read_bandwidth(args.repeats)
  params = variants["fixed"][1]["params"]
  print(f"memory read bandwidth (jitted sum over 512 MB): {bandwidth / 1e9:.1f} GB/s", flush=True)
  for dtype in (jnp.float32, jnp.bfloat16):
    nbytes = decoder_bytes_per_frame(params) * jnp.dtype(dtype).itemsize // 4
    seconds = matvec_floor(params, dtype, args.repeats)
    print(f"decoder weights alone, {jnp.dtype(dtype).name}: {nbytes / 1e6:.0f} MB per frame in "
          f"{seconds * 1e3:.2f} ms = {nbytes / seconds / 1e9:.1f} GB/s, at most "
          f"{1 / seconds:.0f} frames/s", flush=True)
  print(f"generation, batch 1, {args.context} input frames, up to {args.frames} frames, float32:")
  for variant in ("fixed", "original"):
    config, variables = variants[variant]
    jax_generation(config, variables, jnp.asarray(inputs), args.frames, args.repeats, variant,
                   bandwidth)
  if not args.skip_torch:
    torch_generation(torch_model, inputs, args.frames, args.repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=400, help="frames to generate")
  parser.add_argument("--context", type=int, default=200, help="input frames")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--skip_generation", action="store_true")
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--skip_long_context", action="store_true")
  args = parser.parse_args()

  import torch
  import s2s_torch_reference as ref

  print(f"{load()}; {os.cpu_count()} CPUs; jax {jax.__version__}, torch {torch.__version__}",
        flush=True)
  torch.manual_seed(0)
  torch_model = ref.S2STransformer().eval()
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  variants = {}
  for variant in ("original", "fixed"):
    variables, model_config = convert_s2s_state_dict(state, variant)
    variants[variant] = (S2SConfig.from_dict(model_config), jax.device_put(variables))
  rng = np.random.default_rng(0)
  inputs = rng.integers(0, 1024, (1, 8, args.context))

  if not args.skip_generation:
    generation_benchmarks(variants, torch_model, inputs, args)

  if not args.skip_training:
    training(variants, None if args.skip_torch else torch_model, args.repeats)

  if not args.skip_long_context:
    print("long context (fixed variant, float32 weights):")
    long_context(*variants["fixed"], frames=50)
  print(load())


if __name__ == "__main__":
  main()
