"""Measures converting a full-size original checkpoint (the 785 MB `best_codec.pt` format).

    python tools/benchmark_convert.py [--workdir=/tmp/convert_benchmark]

Builds the original-size codec and discriminator with the PyTorch reference
(`tests/torch_reference.py`), takes one real training step at batch 1 × 0.25 s so that both
AdamW states are populated, saves it in the original format, then runs
`tools/convert_torch_checkpoint.py` in a fresh process and prints its wall time and peak memory
(the converter measures both itself), and checks that the result loads.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_checkpoint(path: str) -> None:
  sys.path.insert(0, str(ROOT / "tests"))
  import torch
  import torch_reference as ref

  torch.manual_seed(0)
  codec, disc = ref.TeluCodec(), ref.DACDiscriminator()
  (gen_opt, disc_opt), _ = ref.make_optimizers(codec, disc)
  audio = 0.1 * torch.randn(1, 1, 4000)
  ref.train_step(codec, disc, gen_opt, disc_opt, audio)
  ref.save_original_checkpoint(path, 0, codec, disc, gen_opt, disc_opt, snr=1.0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/convert_benchmark")
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  checkpoint = os.path.join(args.workdir, "best_codec.pt")
  if not os.path.exists(checkpoint):
    print("building a full-size original checkpoint (one real training step) ...", flush=True)
    make_checkpoint(checkpoint)
  print(f"{checkpoint}: {os.path.getsize(checkpoint):,} bytes")
  output = os.path.join(args.workdir, "converted")
  shutil.rmtree(output, ignore_errors=True)
  start = time.perf_counter()
  subprocess.run([sys.executable, str(ROOT / "tools" / "convert_torch_checkpoint.py"),
                  f"--input={checkpoint}", f"--output={output}"], check=True)
  print(f"conversion process wall time (with Python and JAX start-up): "
        f"{time.perf_counter() - start:.1f} s")

  from telugu_jax import inference
  codec = inference.load_codec(output)
  codes = codec.encode(0.1 * __import__("numpy").random.default_rng(0).standard_normal(16000))
  print(f"loaded: codes {codes.shape} from 1 s of audio")


if __name__ == "__main__":
  main()
