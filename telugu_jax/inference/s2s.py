"""Loading and running an S2S checkpoint: numpy in, numpy out.

    from telugu_jax.inference.s2s import load_s2s
    s2s = load_s2s("workdir/s2s_converted")          # the variant is read from the checkpoint
    logits = s2s.logits(input_codes, target_codes, speaker=0, emotion=1)  # [B, Q, T, V]
    codes, lengths = s2s.generate(input_codes, speaker=0, emotion=1, max_frames=400, seed=0)
    for frame in s2s.stream(input_codes, speaker=0, emotion=1):        # [B, Q] per frame
        ...
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax import checkpoints
from telugu_jax.inference import generation
from telugu_jax.models.s2s import S2SConfig, S2STransformer, teacher_forcing, undelay


@functools.partial(jax.jit, static_argnames="model")
def _logits(model: S2STransformer, variables: dict[str, Any], input_codes: jax.Array,
            target_codes: jax.Array, speaker: jax.Array, emotion: jax.Array) -> jax.Array:
  c = model.config
  batch = teacher_forcing(c, target_codes)
  logits = model.apply(variables, input_codes, batch.decoder_input, speaker, emotion)
  if c.is_original:
    return logits
  # Frame f of level q was predicted at step f + delays[q]; the last step predicts the end.
  return undelay(logits, c.level_delays)[:, :, :target_codes.shape[-1]]


class S2S:
  """An S2S model with its weights.

  Args:
    config: the model configuration (its `variant` selects the original or the fixed model).
    variables: `{"params": ..., "batch_stats": ...}`.
  """

  def __init__(self, config: S2SConfig, variables: dict[str, Any]):
    self.config = config
    self.model = S2STransformer(config)
    self.variables = jax.device_put(variables)

  @property
  def variant(self) -> str:
    return self.config.variant

  def _batch(self, input_codes: np.ndarray, speaker, emotion) -> tuple[jax.Array, ...]:
    codes = jnp.asarray(input_codes, jnp.int32)
    if codes.ndim != 3 or codes.shape[1] != self.config.num_quantizers:
      raise ValueError(f"codes must be [B, {self.config.num_quantizers}, T], got {codes.shape}")
    b = codes.shape[0]
    return (codes, jnp.broadcast_to(jnp.asarray(speaker, jnp.int32), (b,)),
            jnp.broadcast_to(jnp.asarray(emotion, jnp.int32), (b,)))

  def logits(self, input_codes: np.ndarray, target_codes: np.ndarray, speaker: int | np.ndarray,
             emotion: int | np.ndarray) -> np.ndarray:
    """Teacher-forced logits `[B, Q, T, V]` float32 of `target_codes [B, Q, T]` given
    `input_codes [B, Q, S]`, under the variant's own shift-right convention.

    `logits[b, q, t]` is the distribution of `target_codes[b, q, t]`. original: `V = vocab_size`,
    the decoder input is the targets shifted right with code 0 as the start frame (and, as in the
    original, every position attends to the whole target sequence through the "cross-attention").
    fixed: `V = vocab_size + 1` (class `vocab_size` is end-of-speech), a start frame and the
    config's delay pattern; causal.
    """
    codes, speaker, emotion = self._batch(input_codes, speaker, emotion)
    targets = jnp.asarray(target_codes, jnp.int32)
    return np.asarray(_logits(self.model, self.variables, codes, targets, speaker, emotion))

  def sampling_args(self, input_codes, speaker, emotion, temperature, top_k, top_p, seed):
    """The arguments of `generation.generate` / `generation.stream` after the input codes:
    `(model, variables, codes, speaker, emotion, sampling, seed)` as device arrays."""
    codes, speaker, emotion = self._batch(input_codes, speaker, emotion)
    return (self.model, self.variables, codes, speaker, emotion,
            generation.Sampling.make(temperature, top_k, top_p), jnp.int32(seed))

  def generate(self, input_codes: np.ndarray, speaker: int | np.ndarray,
               emotion: int | np.ndarray, *, max_frames: int = 1000, temperature: float = 0.8,
               top_k: int = 0, top_p: float = 0.95, seed: int = 0, beam_size: int = 0,
               length_penalty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Samples a response to `input_codes [B, Q, S]` (right-padded with `config.pad_id` in the
    fixed variant when lengths differ).

    Runs one compiled `lax.while_loop` until every sequence has produced end-of-speech (fixed
    variant) or `max_frames` frames. Temperature 0 is greedy; `top_k=0` and `top_p=1` turn the
    cuts off. The defaults are the original's sampling settings. `beam_size` > 0 (fixed variant)
    searches for the most likely answer instead (`generation.beam_search`, scored per frame to
    the power `length_penalty`); the sampling settings are then unused.

    Returns:
      `(codes, lengths)`: int32 `[B, Q, T]` with `T = max(lengths)` (frames at or after a
      sequence's length hold `config.pad_id`), and int32 `[B]`.
    """
    if beam_size > 0:
      codes, speaker, emotion = self._batch(input_codes, speaker, emotion)
      codes, lengths, _ = generation.beam_search(
          self.model, self.variables, codes, speaker, emotion, max_frames=max_frames,
          beam_size=beam_size, length_penalty=jnp.float32(length_penalty))
    else:
      args = self.sampling_args(input_codes, speaker, emotion, temperature, top_k, top_p, seed)
      codes, lengths = generation.generate(*args, max_frames=max_frames)
    lengths = np.asarray(lengths)
    return np.asarray(codes)[..., :int(lengths.max(initial=0))], lengths

  def stream(self, input_codes: np.ndarray, speaker: int | np.ndarray, emotion: int | np.ndarray,
             *, max_frames: int = 1000, temperature: float = 0.8, top_k: int = 0,
             top_p: float = 0.95, seed: int = 0, frames_per_call: int = 4
             ) -> Iterator[np.ndarray]:
    """Like `generate`, but yields each frame `[B, Q]` int32 as soon as it is complete; the
    frames equal `generate`'s with the same arguments. Each device call decodes
    `frames_per_call` frames."""
    args = self.sampling_args(input_codes, speaker, emotion, temperature, top_k, top_p, seed)
    return generation.stream(*args, max_frames=max_frames, frames_per_call=frames_per_call)


def load_s2s(path: str, step: int | None = None) -> S2S:
  """Loads an S2S checkpoint written by the converter or the S2S trainer.

  Args:
    path: a converted checkpoint directory or an S2S training workdir (any stage); its metadata
      names `task == "s2s"`, the `variant` and the `model` config dict. Only the parameters and
      BatchNorm statistics are read.
    step: which step (default the newest readable one).
  """
  root, meta = checkpoints.read_model_meta(path, "s2s", step)
  config = S2SConfig.from_dict({**meta["model"], "variant": meta["variant"]})
  model = S2STransformer(config)
  codes = jnp.zeros((1, config.num_quantizers, 4), jnp.int32)
  ids = jnp.zeros((1,), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), codes, codes, ids, ids))
  variables = checkpoints.restore_subtree(
      root, {"params": abstract["params"], "batch_stats": abstract["batch_stats"]}, step)
  return S2S(config, variables)
