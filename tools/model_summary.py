"""Prints the parameter counts of the codec and the discriminator, per top-level module.

    python tools/model_summary.py            # the original configuration
    python tools/model_summary.py --depth=2  # one level deeper

Shapes only: nothing is initialised, so this is instant even at full size.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from telugu_jax.models.codec import Codec
from telugu_jax.models.discriminators import Discriminator


def count_by_prefix(tree, depth: int) -> dict[str, int]:
  counts: dict[str, int] = {}
  for path, leaf in traverse_util.flatten_dict(tree).items():
    name = "/".join(path[:depth])
    counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=1, help="module nesting depth to break down")
  args = parser.parse_args()
  audio = jnp.zeros((1, 16000))
  for name, model in (("codec", Codec()), ("discriminator", Discriminator())):
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), audio))
    for collection, tree in variables.items():
      counts = count_by_prefix(tree, args.depth)
      print(f"{name} {collection}: {sum(counts.values()):,}")
      for prefix, count in counts.items():
        print(f"  {prefix:40s} {count:>12,}")


if __name__ == "__main__":
  main()
