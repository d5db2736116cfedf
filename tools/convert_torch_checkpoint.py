"""Converts an original PyTorch checkpoint to an Orbax checkpoint directory.

    python tools/convert_torch_checkpoint.py --input=best_codec.pt --output=converted/

Accepts the original codec trainer's checkpoints (codec, discriminator, both AdamW states, epoch,
SNR), a dict with only `codec_state_dict`, or a bare codec state dict; and original S2S
transformer checkpoints (a dict with `model_state`, or the bare state dict), converted to the
`--variant=original` model (the default: the original's forward, exactly) or the `fixed` one
(`telugu_jax.models.s2s`). The output is written
to a temporary directory next to `--output` and renamed into place only when complete: on any
error nothing is left behind and the exit code is 1.

Load the result with `telugu_jax.inference.load_codec(DIR)`, or continue training from it with
`python -m telugu_jax.main --config=configs/codec.py --workdir=W --config.init_from=DIR`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time

import numpy as np


def _count(tree) -> int:
  import jax
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def describe(state: dict, meta: dict) -> str:
  lines = [f"codec: {_count(state['gen']['params']):,} parameters, "
           f"{_count(state['gen']['vq']):,} EMA statistics; architecture {meta['codec']}"]
  if "disc" in state:
    lines.append(f"discriminator: {_count(state['disc']['params']):,} parameters; "
                 f"architecture {meta['discriminator']}")
  for name, label in (("gen", "codec"), ("disc", "discriminator")):
    if f"{name}_optimizer" in meta:
      h = meta[f"{name}_optimizer"]
      lines.append(f"{label} AdamW: step {int(state[name]['opt'].count)}, lr {h['lr']:.3g} "
                   f"(initial {h['initial_lr']:.3g}), betas {h['betas']}, eps {h['eps']}, "
                   f"weight decay {h['weight_decay']}")
  lines.append(f"epoch {meta.get('epoch', 'unknown')}, SNR {meta.get('snr', 'not saved')}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True, help="the PyTorch checkpoint (.pt)")
  parser.add_argument("--output", required=True, help="the Orbax checkpoint directory to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  parser.add_argument("--variant", choices=("original", "fixed"), default=None,
                      help="S2S checkpoints only: the model variant to convert to (original)")
  args = parser.parse_args(argv)

  import jax

  from telugu_jax.convert import torch_checkpoint
  from telugu_jax.convert.codec import CheckpointMismatchError
  from telugu_jax.convert.s2s import convert_s2s_state_dict, find_s2s_state_dict
  from telugu_jax import checkpoints

  start = time.perf_counter()
  output = os.path.abspath(args.output)
  partial = f"{output}.partial-{os.getpid()}"
  try:
    if os.path.isdir(args.input):
      raise torch_checkpoint.ConversionError("is a directory; expected a .pt file")
    if not os.path.isfile(args.input):
      raise torch_checkpoint.ConversionError("no such file")
    if os.path.exists(output) and os.listdir(output) and not args.overwrite:
      raise torch_checkpoint.ConversionError(
          f"{output} exists and is not empty (pass --overwrite to replace it)")
    size = os.path.getsize(args.input)
    print(f"reading {args.input} ({size / 1e6:,.1f} MB)", flush=True)
    checkpoint = torch_checkpoint.load_torch_file(args.input)
    s2s_state_dict = find_s2s_state_dict(checkpoint)
    if s2s_state_dict is not None:
      variant = args.variant or "original"
      state, model = convert_s2s_state_dict(s2s_state_dict, variant)
      meta = {"task": "s2s", "variant": variant, "model": model, "source": "pytorch", "step": 0}
      print(f"S2S transformer ({variant} variant): {_count(state['params']):,} parameters, "
            f"{_count(state['batch_stats']):,} BatchNorm statistics; {model}", flush=True)
    elif args.variant is not None:
      raise torch_checkpoint.ConversionError("--variant applies to S2S checkpoints only")
    else:
      state, meta = torch_checkpoint.convert(checkpoint)
      print(describe(state, meta), flush=True)
    del checkpoint
    # Orbax serialises JAX arrays with fewer intermediate copies than numpy views of the
    # memory-mapped input (peak 1.7 GB instead of 2.5 GB for the 785 MB checkpoint).
    state = jax.device_put(state)
    checkpoints.save(partial, int(meta["step"]), state, meta)
    if os.path.exists(output):
      shutil.rmtree(output)
    os.replace(partial, output)
  except (torch_checkpoint.ConversionError, CheckpointMismatchError) as e:
    shutil.rmtree(partial, ignore_errors=True)
    message = str(e)  # Most messages name the file already; the others get it in front.
    print(f"error: {message if message.startswith(args.input) else f'{args.input}: {message}'}",
          file=sys.stderr)
    return 1
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"wrote {output} (step {meta['step']}) in {time.perf_counter() - start:.1f} s, "
        f"peak memory {peak_mb:,.0f} MB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
