"""Codec training and inference speed: JAX against the PyTorch reference, on this machine.

    python tools/benchmark_codec.py                      # batch 4 × 1 s, full-size models
    python tools/benchmark_codec.py --cpus=1             # both frameworks confined to one core
    python tools/benchmark_codec.py --inference_only     # only encode + decode of 10 s
    python tools/benchmark_codec.py --inference_only --other_buckets_per_octave=2  # + coarser buckets
    python tools/benchmark_codec.py --batch=16 --rounds=3 --dtypes=float32,bfloat16  # on a GPU

Measures, in one process and interleaved (JAX step, PyTorch step, JAX step, ...) so that both see
the same machine load:
- the GAN training step (same shapes and hyper-parameters: the original's discriminator step,
  then generator step) for JAX in each of `--dtypes` and for PyTorch (`tests/torch_reference.py`,
  which like the original also back-propagates into the discriminator's weights during the
  generator step): best and median wall time, CPU time, audio-seconds per second, the ratio;
- JAX's FLOPs per step (XLA's cost analysis), the achieved GFLOP/s and this machine's measured
  float32 matmul ceiling, compile time and XLA's temporary memory;
- encode + decode of 10 s of audio at batch 1 (JAX through `telugu_jax.inference.codec`, with
  its first call, which compiles or reads the persistent compilation cache, timed apart);
- the load average before and after each part, and the peak process memory.
On a shared machine the best-of-N times are the ones to compare; `--cpus=1` confines the process
(XLA's and PyTorch's threads) to one core, whose CPU seconds per step other processes inflate far
less than they inflate two threads' wall time. Runs unchanged on a GPU (PyTorch then uses CUDA
if it sees it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def load() -> str:
  return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def matmul_ceiling_gflops(n: int = 2048, seconds: float = 3.0) -> float:
  """Best-of float32 `n × n` matmul throughput through XLA on the default device, over at least
  `seconds` of back-to-back products: the first few run below the sustained rate (a best of 5
  read 145 GFLOP/s where 30 read 182 on the same idle machine)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best, end = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < end:
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


class Timer:
  """Wall and CPU seconds of repeated calls of `run()`, which must block until done."""

  def __init__(self, name: str, run):
    self.name, self.run, self.wall, self.cpu = name, run, [], []

  def __call__(self) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    self.run()
    self.wall.append(time.perf_counter() - wall)
    self.cpu.append(time.process_time() - cpu)


def jax_step(config, audio: np.ndarray) -> tuple[Timer, dict[str, float]]:
  """A compiled JAX GAN step (one warm-up call done) and its compile statistics."""
  import jax

  from telugu_jax.train import codec as trainer

  state = trainer.init_state(config, jax.random.key(0), audio.shape[1])
  step = jax.jit(trainer.make_train_step(config), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, audio).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], audio)
    jax.block_until_ready(metrics)

  run()  # warm-up
  return Timer(f"JAX {config.compute_dtype}", run), {
      "compile_s": compile_s, "flops": float(cost.get("flops", 0.0)) if cost else 0.0,
      "temp_gb": getattr(memory, "temp_size_in_bytes", 0) / 1e9 if memory else 0.0}


def torch_step(audio: np.ndarray) -> Timer:
  """The PyTorch reference's GAN step (one warm-up call done)."""
  import torch
  import torch_reference as ref

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  codec, disc = ref.TeluCodec().to(device), ref.DACDiscriminator().to(device)
  (gen_opt, disc_opt), _ = ref.make_optimizers(codec, disc)
  x = torch.from_numpy(audio)[:, None].to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run():
    ref.train_step(codec, disc, gen_opt, disc_opt, x)
    sync()

  run()  # warm-up
  return Timer(f"PyTorch {device} float32", run)


def inference_timers(seconds: float, other_per_octave: int = 0
                     ) -> tuple[list[Timer], Timer, float]:
  """Encode + decode of `seconds` of audio, batch 1: JAX (inference API) and PyTorch timers, and
  the JAX first call's seconds (compilation or a persistent-cache read). `other_per_octave` > 0
  adds a JAX timer with that many length buckets per octave (the default is `load_codec`'s)."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch_reference as ref

  from telugu_jax.inference.codec import CodecModel
  from telugu_jax.models.codec import Codec

  wave = (0.1 * np.random.default_rng(0).standard_normal((1, int(seconds * 16000)))).astype(
      np.float32)
  variables = Codec().init(jax.random.key(0), jnp.zeros((1, 16000)))
  codec = CodecModel({}, variables)  # the original architecture
  start = time.perf_counter()
  codec.decode(codec.encode(wave))
  first_s = time.perf_counter() - start
  jax_timers = [Timer("JAX", lambda: codec.decode(codec.encode(wave)))]
  if other_per_octave:
    other = CodecModel({}, variables, buckets_per_octave=other_per_octave)
    other.decode(other.encode(wave))
    jax_timers.append(Timer(f"JAX, {other_per_octave} buckets per octave",
                            lambda: other.decode(other.encode(wave))))

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch_codec = ref.TeluCodec().to(device).eval()
  x = torch.from_numpy(wave)[:, None].to(device)

  def torch_run():
    with torch.no_grad():
      torch_codec.decode(torch_codec.encode(x))
    if device == "cuda":
      torch.cuda.synchronize()

  torch_run()  # warm-up
  return jax_timers, Timer("PyTorch", torch_run), first_s


def interleave(timers: list[Timer], rounds: int) -> None:
  for _ in range(rounds):
    for timer in timers:
      timer()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=1.0, help="crop length per example")
  parser.add_argument("--rounds", type=int, default=5,
                      help="timed training steps per framework (after one warm-up each)")
  parser.add_argument("--dtypes", default="float32", help="JAX compute dtypes, comma-separated")
  parser.add_argument("--cpus", type=int, default=0,
                      help="confine the process to this many cores (0: all)")
  parser.add_argument("--inference_rounds", type=int, default=7)
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--other_buckets_per_octave", type=int, default=0,
                      help="also time encode + decode with this many length buckets per octave")
  parser.add_argument("--inference_only", action="store_true",
                      help="only the encode + decode comparison (no training steps)")
  args = parser.parse_args()
  if args.cpus:  # Before JAX and PyTorch start their thread pools, which they size to it.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  import jax

  from configs import codec as codec_configs

  audio = (0.1 * np.random.default_rng(0).standard_normal(
      (args.batch, int(args.seconds * 16000)))).astype(np.float32)
  audio_seconds = args.batch * args.seconds
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs, batch {args.batch} × {args.seconds:g} s, full-size codec and discriminator; "
        f"{load()}")
  ceiling = matmul_ceiling_gflops()
  print(f"float32 matmul ceiling (2048², XLA): {ceiling:,.0f} GFLOP/s")

  timers, stats = [], {}
  for dtype in [] if args.inference_only else args.dtypes.split(","):
    config = codec_configs.get_config()
    with config.unlocked():
      config.compute_dtype = dtype
    timer, stats[timer.name] = jax_step(config, audio)
    timers.append(timer)
    s = stats[timer.name]
    print(f"{timer.name}: compile {s['compile_s']:.0f} s, {s['flops'] / 1e12:.2f} TFLOP/step, "
          f"XLA temporaries {s['temp_gb']:.2f} GB; peak process memory {peak_rss_gb():.1f} GB")
  if not args.skip_torch and not args.inference_only:
    import torch

    timers.append(torch_step(audio))
    print(f"PyTorch: {torch.get_num_threads()} threads; peak process memory {peak_rss_gb():.1f} GB")

  if timers:
    print(f"training steps, {args.rounds} rounds interleaved; before: {load()}")
    interleave(timers, args.rounds)
    print(f"after: {load()}")
  for timer in timers:
    best, median = min(timer.wall), float(np.median(timer.wall))
    line = (f"  {timer.name}: best {best:.2f} s/step (median {median:.2f}, CPU "
            f"{min(timer.cpu):.1f} s), {audio_seconds / best:.3f} audio-s/s")
    if timer.name in stats and stats[timer.name]["flops"]:
      gflops = stats[timer.name]["flops"] / best / 1e9
      line += f", {gflops:,.0f} GFLOP/s ({gflops / ceiling:.0%} of the matmul ceiling)"
    print(line)
  if not args.skip_torch:
    torch_best = min(timers[-1].wall) if timers else 0.0
    for timer in timers[:-1]:
      print(f"  {timer.name} / PyTorch throughput (best times): {torch_best / min(timer.wall):.2f}×")

    jax_timers, torch_timer, first_s = inference_timers(10.0, args.other_buckets_per_octave)
    print(f"encode + decode of 10 s, batch 1, {args.inference_rounds} rounds interleaved "
          f"(JAX first call {first_s:.1f} s); before: {load()}")
    interleave([*jax_timers, torch_timer], args.inference_rounds)
    print(f"after: {load()}")
    for timer in (*jax_timers, torch_timer):
      print(f"  {timer.name}: best {min(timer.wall):.3f} s (median {np.median(timer.wall):.3f}), "
            f"real-time factor {min(timer.wall) / 10.0:.3f}")
    for timer in jax_timers:
      print(f"  {timer.name} / PyTorch speed (best times): "
            f"{min(torch_timer.wall) / min(timer.wall):.2f}×")
  print(f"peak process memory {peak_rss_gb():.1f} GB")


if __name__ == "__main__":
  main()
