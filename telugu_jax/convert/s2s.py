"""Original S2S transformer state dicts (`s2s_transformer.py`) → Flax variables.

The original state dict has 335 entries for the default sizes (71.69 M values): the parameters,
the conv modules' BatchNorm running statistics and `num_batches_tracked` counters, and the unused
`rope.inv_freq` buffer. Names map onto `telugu_jax.models.s2s` one to one (`encoder_layers.3` →
`encoder_layers_3`, Linear `weight [out, in]` → `kernel [in, out]`, the attention's `qkv` Linear
→ its three thirds `qkv/q`, `qkv/k`, `qkv/v`, LayerNorm/BatchNorm `weight` → `scale`, running
statistics → the "batch_stats" collection). `rope.inv_freq` is checked against
the rotary formula and dropped, and so are the BatchNorm step counters (momentum 0.1 never reads
them).

The "original" variant takes the weights as they are. The "fixed" variant (see
`telugu_jax.models.s2s`) starts from them: the embeddings gain rows for end-of-speech, start and
padding ids, and the output heads an end-of-speech class, all set to the mean of the existing rows
(a neutral start for fine-tuning); each encoder block's `layer_scale` initialises its four
per-branch LayerScale vectors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from telugu_jax.convert.codec import CheckpointMismatchError
from telugu_jax.models.s2s import VARIANTS, S2SConfig

_SIGNATURE_KEYS = ("token_embed.0.weight", "decoder_layers.0.cross_attn.qkv.weight",
                   "output_heads.0.weight", "style_embed.style_mix.0.weight")
_LAYER_NORMS = {"attn_norm", "layer_norm", "ln1", "ln2", "ln3", "encoder_norm", "decoder_norm",
                "mix_norm", "norm"}
_BRANCH_SCALES = ("ffn1_scale", "attn_scale", "conv_scale", "ffn2_scale")
_MODULE_RENAMES = (  # torch module path (after index joining) → Flax module path
    (r"style_mix_0", "mix"), (r"style_mix_1", "mix_norm"),
    (r"(ffn[12])_0", r"\1/norm"), (r"(ffn[12])_1", r"\1/fc1"), (r"(ffn[12])_4", r"\1/fc2"),
    (r"ffn_0", "ffn/fc1"), (r"ffn_3", "ffn/fc2"),
)


def is_s2s_state_dict(state_dict: Any) -> bool:
  """Whether `state_dict` (a mapping of names to arrays) is an original S2S model's."""
  return isinstance(state_dict, Mapping) and all(k in state_dict for k in _SIGNATURE_KEYS)


def find_s2s_state_dict(checkpoint: Any) -> Mapping[str, Any] | None:
  """The S2S state dict inside a loaded original checkpoint: the object itself when it is one,
  or its `model_state` entry (the original trainer's format); None otherwise."""
  if is_s2s_state_dict(checkpoint):
    return checkpoint
  if isinstance(checkpoint, Mapping) and is_s2s_state_dict(checkpoint.get("model_state")):
    return checkpoint["model_state"]
  return None


def expected_shapes(config: S2SConfig) -> dict[str, tuple[int, ...]]:
  """Every key of the original's state dict for `config`'s sizes, with its PyTorch shape."""
  c = config
  d, f, inner = c.hidden_dim, c.ffn_dim, c.conv_expansion * c.hidden_dim
  shapes: dict[str, tuple[int, ...]] = {}

  def linear(prefix, n_in, n_out):
    shapes.update({f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)})

  def norm(prefix, n=d):
    shapes.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)})

  def attention(prefix):
    linear(f"{prefix}.qkv", d, 3 * d)
    linear(f"{prefix}.out", d, d)

  for q in range(c.num_quantizers):
    shapes[f"token_embed.{q}.weight"] = (c.vocab_size, d // c.num_quantizers)
  shapes["style_embed.emotion_embed.weight"] = (c.num_emotions, d)
  shapes["style_embed.speaker_embed.weight"] = (c.num_speakers, d)
  linear("style_embed.style_mix.0", 2 * d, d)
  norm("style_embed.style_mix.1")
  shapes["rope.inv_freq"] = (c.head_dim // 2,)
  for i in range(c.num_encoder_layers):
    p = f"encoder_layers.{i}"
    shapes[f"{p}.layer_scale"] = (d,)
    for ffn in ("ffn1", "ffn2"):
      norm(f"{p}.{ffn}.0")
      linear(f"{p}.{ffn}.1", d, f)
      linear(f"{p}.{ffn}.4", f, d)
    norm(f"{p}.attn_norm")
    attention(f"{p}.self_attn")
    norm(f"{p}.conv.layer_norm")
    linear(f"{p}.conv.pointwise_conv1", d, 2 * inner)
    shapes[f"{p}.conv.depthwise_conv.weight"] = (inner, 1, c.conv_kernel_size)
    shapes[f"{p}.conv.depthwise_conv.bias"] = (inner,)
    norm(f"{p}.conv.norm", inner)
    shapes[f"{p}.conv.norm.running_mean"] = (inner,)
    shapes[f"{p}.conv.norm.running_var"] = (inner,)
    shapes[f"{p}.conv.norm.num_batches_tracked"] = ()
    linear(f"{p}.conv.pointwise_conv2", inner, d)
  norm("encoder_norm")
  for i in range(c.num_decoder_layers):
    p = f"decoder_layers.{i}"
    for ln in ("ln1", "ln2", "ln3"):
      norm(f"{p}.{ln}")
    attention(f"{p}.self_attn")
    attention(f"{p}.cross_attn")
    linear(f"{p}.ffn.0", d, f)
    linear(f"{p}.ffn.3", f, d)
  norm("decoder_norm")
  for q in range(c.num_quantizers):
    linear(f"output_heads.{q}", d, c.vocab_size)
  return shapes


def flax_locations(key: str) -> list[tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]]]:
  """Where an original key goes: `(Flax variable path, collection first; layout change)` pairs,
  several for the attention's `qkv` (its q, k and v thirds), none for the dropped buffers
  (`rope.inv_freq`, `num_batches_tracked`)."""
  if key == "rope.inv_freq" or key.endswith(".num_batches_tracked"):
    return []
  module, leaf = key.rsplit(".", 1)
  module = re.sub(r"\.(\d+)", r"_\1", module).replace(".", "/")
  for pattern, replacement in _MODULE_RENAMES:
    module = re.sub(rf"(?<![^/]){pattern}(?![^/])", replacement, module)
  parts = tuple(module.split("/"))
  name = parts[-1]
  same = lambda x: x
  if leaf == "layer_scale":
    return [(("params", *parts, "layer_scale"), same)]
  if leaf in ("running_mean", "running_var"):
    return [(("batch_stats", *parts, leaf[len("running_"):]), same)]
  if name.startswith("token_embed") or name.endswith("_embed"):
    return [(("params", *parts, "embedding"), same)]
  if name in _LAYER_NORMS:  # LayerNorm, and the conv module's BatchNorm ("norm")
    return [(("params", *parts, "scale" if leaf == "weight" else "bias"), same)]
  if name == "depthwise_conv" and leaf == "weight":  # [C, 1, K] -> [K, 1, C]
    return [(("params", *parts, "kernel"), lambda x: x.transpose(2, 1, 0))]
  linear = (lambda x: x.T) if leaf == "weight" else same
  flax_leaf = "kernel" if leaf == "weight" else "bias"
  if name == "qkv":  # rows [0, D) are q, [D, 2D) k, [2D, 3D) v
    return [(("params", *parts, part, flax_leaf),
             lambda x, i=i: linear(np.split(x, 3, axis=0)[i]))
            for i, part in enumerate(("q", "k", "v"))]
  return [(("params", *parts, flax_leaf), linear)]


def infer_config(state_dict: Mapping[str, Any], variant: str) -> S2SConfig:
  """The model sizes of an original state dict; the settings no weight shows (chunk size,
  lookahead, maximum length, dropout) keep the original's defaults."""

  def shape(key):
    if key not in state_dict:
      raise CheckpointMismatchError(f"missing key {key!r}: cannot infer the model size")
    return tuple(np.shape(state_dict[key]))

  def count(prefix):
    return len({int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", k))})

  num_quantizers = count("token_embed")
  vocab_size, level_dim = shape("token_embed.0.weight")
  hidden_dim = num_quantizers * level_dim
  return S2SConfig(
      hidden_dim=hidden_dim,
      num_heads=hidden_dim // (2 * shape("rope.inv_freq")[0]),
      num_encoder_layers=count("encoder_layers"),
      num_decoder_layers=count("decoder_layers"),
      ffn_dim=shape("decoder_layers.0.ffn.0.weight")[0],
      conv_kernel_size=shape("encoder_layers.0.conv.depthwise_conv.weight")[-1],
      conv_expansion=shape("encoder_layers.0.conv.pointwise_conv1.weight")[0] // (2 * hidden_dim),
      vocab_size=vocab_size,
      num_quantizers=num_quantizers,
      num_speakers=shape("style_embed.speaker_embed.weight")[0],
      num_emotions=shape("style_embed.emotion_embed.weight")[0],
      variant=variant,
  )


def _check_keys(state_dict: Mapping[str, Any], config: S2SConfig) -> None:
  expected = expected_shapes(config)
  for key, value in state_dict.items():
    if key not in expected:
      raise CheckpointMismatchError(
          f"unexpected key {key!r} (shape {tuple(np.shape(value))}): not part of the S2S model")
    if tuple(np.shape(value)) != expected[key]:
      raise CheckpointMismatchError(
          f"key {key!r} has shape {tuple(np.shape(value))}, the model expects {expected[key]}")
  missing = [key for key in expected if key not in state_dict]
  if missing:
    raise CheckpointMismatchError(f"missing key {missing[0]!r} ({len(missing)} missing in all)")
  inv_freq = _float32(state_dict["rope.inv_freq"]).astype(np.float64)
  hd = config.head_dim
  if not np.allclose(inv_freq, 1.0 / config.rope_base ** (np.arange(0, hd, 2) / hd), rtol=1e-2):
    raise CheckpointMismatchError("rope.inv_freq is not 1 / 10000^(2i / head_dim)")


def _float32(value: Any) -> np.ndarray:
  """A numpy float32 copy of an array or a (CPU) PyTorch tensor of any floating dtype."""
  if hasattr(value, "detach"):  # torch.Tensor: numpy has no bfloat16
    value = value.detach().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _with_mean_rows(x: np.ndarray, n: int, axis: int) -> np.ndarray:
  mean = np.mean(x, axis=axis, keepdims=True)
  return np.concatenate([x, np.repeat(mean, n, axis=axis)], axis=axis)


def _to_fixed(flat: dict[tuple[str, ...], np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
  out = {}
  for path, value in flat.items():
    module = path[-2] if len(path) > 1 else ""
    if path[-1] == "embedding" and module.startswith("token_embed"):
      value = _with_mean_rows(value, 3, axis=0)  # end-of-speech, start, padding
    elif module.startswith("output_heads"):
      value = _with_mean_rows(value, 1, axis=-1)  # end-of-speech class
    if path[-1] == "layer_scale":
      out.update({(*path[:-1], name): value.copy() for name in _BRANCH_SCALES})
    else:
      out[path] = value
  return out


def convert_s2s_state_dict(state_dict: Mapping[str, Any], variant: str = "original"
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts an original S2S state dict into variables of `telugu_jax.models.s2s`.

  Args:
    state_dict: torch key → numpy array or CPU tensor; float16 / bfloat16 values are widened to
      float32.
    variant: "original" (reproduces the original's forward exactly) or "fixed".
  Returns:
    `(variables, model_config)`: `{"params": ..., "batch_stats": ...}` as nested dicts of numpy
    float32 arrays, and the `S2SConfig.to_dict()` of the model (sizes inferred from the shapes).
  Raises:
    ValueError (`CheckpointMismatchError`): naming the first unexpected, mis-shaped or missing
      key, or an unknown variant.
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  config = infer_config(state_dict, variant)
  _check_keys(state_dict, config)
  flat = {}
  for key, value in state_dict.items():
    for path, to_flax in flax_locations(key):
      flat[path] = np.ascontiguousarray(to_flax(_float32(value)))
  if variant == "fixed":
    flat = _to_fixed(flat)
  return traverse_util.unflatten_dict(flat), config.to_dict()
