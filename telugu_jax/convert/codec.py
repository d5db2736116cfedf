"""Original codec / discriminator state dicts → Flax variables.

Torch names map onto Flax paths mechanically: a numeric component joins the one before it
(`encoder.encoder.3.conv1.conv.weight` → `encoder/encoder_3/conv1/conv/weight`), GroupNorm's
`weight` is Flax's `scale`, Snake's `alpha` drops its `[1, C, 1]` singleton axes, the quantizer's
EMA buffers go to the "vq" collection, and the STFT window buffers (fixed Hann windows) are
checked and dropped. Convolution weights keep PyTorch's layout (see `models/layers.py`), so
optimizer moments map by the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from telugu_jax.models.layers import hann_window

VQ_BUFFERS = ("ema_cluster_size", "ema_w")
_NEW_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g",
                    "parametrizations.weight.original1": "weight_v"}


class CheckpointMismatchError(ValueError):
  """A state dict does not fit the architecture it is being loaded into."""


def canonical_key(key: str) -> str:
  """Rewrites the newer weight-norm parametrization names to `weight_g` / `weight_v`."""
  for new, old in _NEW_WEIGHT_NORM.items():
    if key.endswith(new):
      return key[: -len(new)] + old
  return key


def is_buffer(key: str) -> bool:
  """Whether an (original codec or discriminator) state-dict key is a buffer, not a parameter."""
  return key.endswith(".window") or key.rsplit(".", 1)[-1] in VQ_BUFFERS


def flax_path(key: str) -> tuple[str, ...]:
  """The Flax variable path (collection first) of a canonical torch key."""
  parts: list[str] = []
  for part in canonical_key(key).split("."):
    if part.isdigit():
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  if re.fullmatch(r"norm\d*", parts[-2]) and parts[-1] == "weight":
    parts[-1] = "scale"
  collection = "vq" if parts[-1] in VQ_BUFFERS else "params"
  return (collection, *parts)


def to_flax_array(key: str, value: np.ndarray) -> np.ndarray:
  """The array as the Flax parameter holds it (Snake's alpha `[1, C, 1]` → `[C]`)."""
  value = np.asarray(value)
  if key.endswith(".alpha"):
    value = value.reshape(-1)
  return value


def from_torch(state_dict: Mapping[str, Any], abstract_variables: Mapping[str, Any],
               dtype=np.float32) -> dict[str, Any]:
  """Converts a codec or discriminator state dict into Flax variables.

  Args:
    state_dict: torch key → array-like (numpy or torch tensor already moved to numpy); float16
      values are widened to `dtype`.
    abstract_variables: the target model's variables (arrays or `jax.ShapeDtypeStruct`), e.g.
      `jax.eval_shape(model.init, ...)`, used to check that every key is present and shaped right.
    dtype: floating dtype of the result.
  Returns:
    Variables with the same structure as `abstract_variables`.
  Raises:
    CheckpointMismatchError: naming the first missing, unexpected or mis-shaped key.
  """
  expected = traverse_util.flatten_dict(abstract_variables)
  converted: dict[tuple[str, ...], np.ndarray] = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    if key.endswith(".window"):
      if not np.allclose(value, hann_window(value.shape[0]), atol=1e-6):
        raise CheckpointMismatchError(f"{key}: expected a periodic Hann window")
      continue
    path = flax_path(key)
    if path not in expected:
      raise CheckpointMismatchError(
          f"unexpected key {key!r} (shape {tuple(value.shape)}): not part of this architecture")
    value = to_flax_array(key, value)
    if tuple(value.shape) != tuple(expected[path].shape):
      raise CheckpointMismatchError(
          f"key {key!r} has shape {tuple(value.shape)}, the model expects "
          f"{tuple(expected[path].shape)}")
    converted[path] = (value.astype(dtype, copy=False) if np.issubdtype(value.dtype, np.floating)
                       else value)
  missing = [path for path in expected if path not in converted]
  if missing:
    raise CheckpointMismatchError(
        f"missing key {to_torch_key(missing[0])!r} ({len(missing)} missing in all)")
  return traverse_util.unflatten_dict(converted)


def to_torch_key(path: tuple[str, ...]) -> str:
  """Inverse of `flax_path` (canonical names): `('params', 'encoder', 'encoder_3', ...)` → torch."""
  parts = []
  for part in path[1:]:
    match = re.fullmatch(r"(.*)_(\d+)", part)
    parts.extend(match.groups() if match else (part,))
  if parts[-1] == "scale":
    parts[-1] = "weight"
  return ".".join(parts)
