"""Codec training and inference speed: JAX against the PyTorch reference, on this machine.

    python tools/benchmark_codec.py                      # batch 4 × 1 s, full-size models
    python tools/benchmark_codec.py --batch=16 --steps=5 # on a GPU

Prints, for the same GAN training step (same shapes and hyper-parameters: the original's
discriminator step, then generator step):
- audio-seconds per second for JAX float32, JAX bfloat16 and PyTorch (the reference in
  `tests/torch_reference.py`, which like the original also back-propagates into the
  discriminator's weights during the generator step), and the JAX / PyTorch ratio;
- JAX's FLOPs per step (XLA's cost analysis), the achieved GFLOP/s and this machine's measured
  float32 matmul ceiling;
- compile time and peak memory;
- encode + decode real-time factor of 10 s of audio for JAX and PyTorch.
Runs unchanged on a GPU (PyTorch then uses CUDA if it sees it).
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def matmul_ceiling_gflops(n: int = 2048, repeats: int = 5) -> float:
  """Best-of float32 `n × n` matmul throughput through XLA on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def bench_jax(config, audio: np.ndarray, steps: int) -> dict[str, float]:
  from telugu_jax.train import codec as trainer

  state = trainer.init_state(config, jax.random.key(0), audio.shape[1])
  step = jax.jit(trainer.make_train_step(config), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, audio).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  memory = compiled.memory_analysis()
  state, metrics = compiled(state, audio)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, audio)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  return {"step_s": step_s, "compile_s": compile_s, "flops": flops,
          "temp_gb": getattr(memory, "temp_size_in_bytes", 0) / 1e9 if memory else 0.0}


def bench_torch(audio: np.ndarray, steps: int) -> dict[str, float]:
  import torch
  import torch_reference as ref

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  codec, disc = ref.TeluCodec().to(device), ref.DACDiscriminator().to(device)
  (gen_opt, disc_opt), _ = ref.make_optimizers(codec, disc)
  x = torch.from_numpy(audio)[:, None].to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  ref.train_step(codec, disc, gen_opt, disc_opt, x)  # warm-up
  times = []
  for _ in range(steps):
    sync()
    start = time.perf_counter()
    ref.train_step(codec, disc, gen_opt, disc_opt, x)
    sync()
    times.append(time.perf_counter() - start)
  return {"step_s": float(np.median(times)), "device": device}


def inference_rtf(seconds: float) -> tuple[float, float]:
  """Encode + decode real-time factors (compute time / audio time) for JAX and PyTorch."""
  import torch
  import torch_reference as ref

  from telugu_jax.inference.codec import CodecModel
  from telugu_jax.models.codec import Codec

  wave = (0.1 * np.random.default_rng(0).standard_normal((1, int(seconds * 16000)))).astype(
      np.float32)
  variables = Codec().init(jax.random.key(0), jnp.zeros((1, 16000)))
  codec = CodecModel({}, variables)  # the original architecture
  codec.decode(codec.encode(wave))  # compile
  start = time.perf_counter()
  codec.decode(codec.encode(wave))
  jax_rtf = (time.perf_counter() - start) / seconds

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch_codec = ref.TeluCodec().to(device).eval()
  x = torch.from_numpy(wave)[:, None].to(device)
  with torch.no_grad():
    torch_codec.decode(torch_codec.encode(x))
    start = time.perf_counter()
    torch_codec.decode(torch_codec.encode(x))
    if device == "cuda":
      torch.cuda.synchronize()
  return jax_rtf, (time.perf_counter() - start) / seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=1.0, help="crop length per example")
  parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()

  from configs import codec as codec_configs

  audio = (0.1 * np.random.default_rng(0).standard_normal(
      (args.batch, int(args.seconds * 16000)))).astype(np.float32)
  audio_seconds = args.batch * args.seconds
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"batch {args.batch} × {args.seconds:g} s, full-size codec and discriminator")
  ceiling = matmul_ceiling_gflops()
  print(f"float32 matmul ceiling (2048², XLA): {ceiling:,.0f} GFLOP/s")

  results = {}
  for dtype in ("float32", "bfloat16"):
    config = codec_configs.get_config()
    with config.unlocked():
      config.compute_dtype = dtype
    r = bench_jax(config, audio, args.steps)
    results[dtype] = r
    print(f"JAX {dtype}: {r['step_s']:.2f} s/step, {audio_seconds / r['step_s']:.3f} audio-s/s, "
          f"{r['flops'] / 1e12:.2f} TFLOP/step, {r['flops'] / r['step_s'] / 1e9:,.0f} GFLOP/s "
          f"({r['flops'] / r['step_s'] / 1e9 / ceiling:.0%} of the matmul ceiling), compile "
          f"{r['compile_s']:.0f} s, XLA temporaries {r['temp_gb']:.2f} GB")
  if not args.skip_torch:
    t = bench_torch(audio, args.steps)
    jax_rate = audio_seconds / results["float32"]["step_s"]
    torch_rate = audio_seconds / t["step_s"]
    print(f"PyTorch ({t['device']}) float32: {t['step_s']:.2f} s/step, {torch_rate:.3f} audio-s/s")
    print(f"JAX float32 / PyTorch: {jax_rate / torch_rate:.2f}×; JAX bfloat16 / PyTorch: "
          f"{audio_seconds / results['bfloat16']['step_s'] / torch_rate:.2f}×")
    jax_rtf, torch_rtf = inference_rtf(10.0)
    print(f"encode + decode of 10 s: JAX real-time factor {jax_rtf:.3f}, PyTorch {torch_rtf:.3f} "
          f"({torch_rtf / jax_rtf:.2f}× faster)")
  print(f"peak process memory {peak_rss_gb():.1f} GB")


if __name__ == "__main__":
  main()
