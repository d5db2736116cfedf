"""Original PyTorch codec checkpoints (`best_codec.pt`, `checkpoint_epoch_N.pt`) → training state.

Accepted inputs (see `reference/original-system.md` §3):
- the trainer's dict: `epoch`, `codec_state_dict`, `discriminator_state_dict`,
  `gen_optimizer_state_dict`, `disc_optimizer_state_dict`, `snr` (best file only);
- a dict holding only `codec_state_dict` (and optionally `epoch` / `snr`);
- a bare codec state dict.
Weight-norm keys in either style, float16 or float32 tensors.

The result has the structure of `telugu_jax.train.codec.init_state` (parts absent from the input
are absent from the result) and metadata naming the architecture inferred from the shapes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax.convert import codec as codec_convert
from telugu_jax.convert.codec import CheckpointMismatchError
from telugu_jax.models.codec import Codec
from telugu_jax.models.discriminators import Discriminator
from telugu_jax import optim

CODEC_KEY, DISC_KEY = "codec_state_dict", "discriminator_state_dict"
GEN_OPT_KEY, DISC_OPT_KEY = "gen_optimizer_state_dict", "disc_optimizer_state_dict"


class ConversionError(ValueError):
  """The input cannot be converted; the message names the file or key and the problem."""


def load_torch_file(path: str) -> Any:
  """`torch.load` without pickle code execution, memory-mapped where the format allows."""
  import torch  # Only conversion needs PyTorch.

  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      head = f.read(8)
    if head[:2] == b"PK":
      raise ConversionError(f"{path}: truncated or corrupted PyTorch checkpoint (broken zip archive)")
    if not head.startswith(b"\x80"):  # The legacy format starts with a pickle protocol byte.
      raise ConversionError(f"{path}: not a PyTorch checkpoint (no zip archive or pickle header)")
  try:
    return torch.load(path, map_location="cpu", weights_only=True,
                      mmap=zipfile.is_zipfile(path))
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here.
    raise ConversionError(f"{path}: cannot be read as a PyTorch checkpoint "
                          f"(truncated or corrupted?): {type(e).__name__}: {e}") from e


def _to_numpy(value: Any) -> np.ndarray:
  import torch

  if isinstance(value, torch.Tensor):
    if value.dtype in (torch.float16, torch.bfloat16):
      value = value.float()
    return value.detach().numpy()
  return np.asarray(value)


def _state_dict(value: Any, what: str) -> dict[str, np.ndarray]:
  if not isinstance(value, Mapping) or not value:
    raise ConversionError(f"{what} is not a state dict (got {type(value).__name__})")
  return {k: _to_numpy(v) for k, v in value.items()}


def split_checkpoint(checkpoint: Any) -> dict[str, Any]:
  """Finds the parts of an original codec checkpoint, whatever its form."""
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f"expected a dict, got {type(checkpoint).__name__}")
  if CODEC_KEY in checkpoint:
    parts = {"codec": _state_dict(checkpoint[CODEC_KEY], CODEC_KEY)}
    if DISC_KEY in checkpoint:
      parts["discriminator"] = _state_dict(checkpoint[DISC_KEY], DISC_KEY)
    for key, name in ((GEN_OPT_KEY, "gen_optimizer"), (DISC_OPT_KEY, "disc_optimizer")):
      if key in checkpoint:
        parts[name] = checkpoint[key]
    for key in ("epoch", "snr"):
      if key in checkpoint:
        parts[key] = float(checkpoint[key]) if key == "snr" else int(checkpoint[key])
    return parts
  if any(k.startswith(("encoder.", "decoder.", "quantizer.")) for k in checkpoint):
    return {"codec": _state_dict(checkpoint, "the checkpoint")}
  raise ConversionError(
      f"not an original codec checkpoint: expected '{CODEC_KEY}' or codec state-dict keys, "
      f"found keys {sorted(checkpoint)[:8]}")


def _shape(state: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
  key_g = codec_convert.canonical_key(key)
  for k, v in state.items():
    if codec_convert.canonical_key(k) == key_g:
      return v.shape
  raise CheckpointMismatchError(f"missing key {key!r}")


def infer_architecture(parts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """`Codec` and `Discriminator` keyword arguments whose shapes match the checkpoint's tensors.

  Periods cannot be read off the weights: a discriminator must have the original's number of
  period sub-discriminators, which are taken to be the original's periods.
  """
  codec = parts["codec"]
  down = [_shape(codec, f"encoder.encoder.{2 * i}.weight_v") for i in range(5)]
  up = [_shape(codec, f"decoder.decoder.{2 * i}.weight_v") for i in range(5)]
  num_quantizers, codebook_size, hidden_dim = _shape(codec, "quantizer.codebooks")
  codec_kwargs = dict(
      encoder_channels=(_shape(codec, "encoder.proj.weight_v")[0], *[s[0] for s in down[:-1]]),
      decoder_channels=(_shape(codec, "decoder.proj.weight_v")[0], *[s[1] for s in up]),
      strides=tuple(s[2] // 2 for s in down), hidden_dim=hidden_dim,
      codebook_size=codebook_size, num_quantizers=num_quantizers,
      straight_through=Codec.straight_through)
  if "discriminator" not in parts:
    return codec_kwargs, None
  disc = parts["discriminator"]
  periods = Discriminator.periods
  num_periods = len({k.split(".")[2] for k in disc if k.startswith("mpd.discriminators.")})
  if num_periods != len(periods):
    raise ConversionError(f"{DISC_KEY}: {num_periods} period discriminators; the original has "
                          f"{len(periods)} (periods {list(periods)})")
  disc_kwargs = dict(
      periods=periods,
      n_ffts=tuple(int(v.shape[0]) for k, v in disc.items() if k.endswith(".window")),
      period_channels=tuple(_shape(disc, f"mpd.discriminators.0.convs.{j}.weight_v")[0]
                            for j in range(5)),
      stft_channels=_shape(disc, "msd.discriminators.0.convs.0.weight_v")[0])
  return codec_kwargs, disc_kwargs


def _adam_moments(optimizer_state: Any, state_dict: Mapping[str, np.ndarray],
                  abstract_params: Any, what: str) -> optim.AdamMoments:
  """Maps a `torch.optim.AdamW` state dict onto the parameters, by `named_parameters()` order."""
  try:
    groups, per_param = optimizer_state["param_groups"], optimizer_state["state"]
  except (TypeError, KeyError) as e:
    raise ConversionError(f"{what}: not an optimizer state dict (missing {e})") from e
  names = [k for k in state_dict if not codec_convert.is_buffer(k)]
  indices = [i for group in groups for i in group["params"]]
  if len(indices) != len(names):
    raise ConversionError(f"{what}: the optimizer holds {len(indices)} parameters, the model "
                          f"{len(names)}")
  learning_rates = {float(group["lr"]) for group in groups}
  if len(learning_rates) != 1 or any(group.get("amsgrad") for group in groups):
    raise ConversionError(f"{what}: expected one AdamW parameter group without amsgrad")
  exp_avg, exp_avg_sq, steps = {}, {}, set()
  for index, name in zip(indices, names):
    entry = per_param.get(index)
    shape = state_dict[name].shape
    if entry is None:  # Never stepped: PyTorch creates the state lazily.
      exp_avg[name] = exp_avg_sq[name] = np.zeros(shape, np.float32)
      steps.add(0)
      continue
    for moment, target in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
      if moment not in entry:
        raise ConversionError(f"{what}: parameter {index} ({name}) has no {moment!r}")
      value = _to_numpy(entry[moment])
      if value.shape != shape:
        raise ConversionError(f"{what}: parameter {index} ({name}) has {moment} of shape "
                              f"{tuple(value.shape)}, the parameter is {tuple(shape)}")
      target[name] = value
    steps.add(int(_to_numpy(entry["step"])))
  if len(steps) != 1:
    raise ConversionError(f"{what}: parameters have different step counts {sorted(steps)}")
  convert = lambda moments: codec_convert.from_torch(moments, {"params": abstract_params})["params"]
  return optim.AdamMoments(count=steps.pop(), mu=convert(exp_avg), nu=convert(exp_avg_sq),
                           learning_rate=learning_rates.pop())


def _hyperparameters(optimizer_state: Mapping[str, Any]) -> dict[str, Any]:
  group = optimizer_state["param_groups"][0]
  return {"lr": float(group["lr"]), "initial_lr": float(group.get("initial_lr", group["lr"])),
          "betas": [float(b) for b in group.get("betas", (0.9, 0.999))],
          "eps": float(group.get("eps", 1e-8)),
          "weight_decay": float(group.get("weight_decay", 0.0))}


def convert(checkpoint: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts a loaded original checkpoint to `(state, meta)`.

  `meta` holds `task`, `codec` (and `discriminator`) model arguments, the optimizers'
  hyper-parameters as saved (`gen_optimizer`, `disc_optimizer`), `epoch`, `snr` and `step`.

  Raises:
    ConversionError / CheckpointMismatchError: naming the first offending key.
  """
  parts = split_checkpoint(checkpoint)
  codec_kwargs, disc_kwargs = infer_architecture(parts)
  audio = jnp.zeros((1, 16000), jnp.float32)
  abstract_codec = jax.eval_shape(lambda: Codec(**codec_kwargs).init(jax.random.key(0), audio))
  codec_vars = codec_convert.from_torch(parts["codec"], abstract_codec)
  state: dict[str, Any] = {"gen": {"params": codec_vars["params"], "vq": codec_vars["vq"]}}
  meta: dict[str, Any] = {"task": "codec", "source": "pytorch", "codec": _jsonable(codec_kwargs)}
  if disc_kwargs is not None:
    abstract_disc = jax.eval_shape(
        lambda: Discriminator(**disc_kwargs).init(jax.random.key(0), audio))
    state["disc"] = codec_convert.from_torch(parts["discriminator"], abstract_disc)
    meta["discriminator"] = _jsonable(disc_kwargs)
  step = 0
  for name, model, key in (("gen", "codec", GEN_OPT_KEY), ("disc", "discriminator", DISC_OPT_KEY)):
    optimizer_state = parts.get(f"{name}_optimizer")
    if optimizer_state is None or model not in parts:
      continue
    moments = _adam_moments(optimizer_state, parts[model], state[name]["params"], key)
    hyper = _hyperparameters(optimizer_state)
    tx = optim.make_adamw(hyper["lr"], *hyper["betas"], hyper["eps"], hyper["weight_decay"],
                          clip_norm=1.0)
    # The structure only (no zero-filled moments): set_moments replaces every leaf.
    state[name]["opt"] = optim.set_moments(jax.eval_shape(tx.init, state[name]["params"]), moments)
    meta[f"{name}_optimizer"] = hyper
    step = max(step, int(moments.count))
  state["step"] = np.asarray(step, np.int32)
  for key in ("epoch", "snr"):
    if key in parts:
      meta[key] = parts[key]
  meta["step"] = step
  return jax.tree.map(np.asarray, state), meta


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
