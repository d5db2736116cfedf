"""Loading a codec or discriminator checkpoint for inference: numpy in, numpy out.

    from telugu_jax import inference
    codec = inference.load_codec("converted/")   # a converted checkpoint or a training workdir
    codes = codec.encode(wave)                   # float32 [B, T] at 16 kHz -> int32 [B, 8, frames]
    wave = codec.decode(codes)                   # -> float32 [B, T']
    recon = codec.reconstruct(wave)              # eval-mode forward, trimmed/padded to T
    codes = codec.encode_batch(padded, lengths)  # end-padded rows of different lengths

Inputs are zero-padded up to a length bucket (1, 1.5, 2, 3, 4, 6, 8, ... seconds) and the
padding is masked inside the model, so each bucket compiles once and the results equal those of
the unpadded input. Compiled buckets persist across processes in JAX's compilation cache
(`use_compilation_cache`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax import checkpoints
from telugu_jax.data.audio import bucket_length
from telugu_jax.inference import streaming
from telugu_jax.models import codec as codec_lib
from telugu_jax.models import layers
from telugu_jax.models.codec import Codec
from telugu_jax.models.discriminators import Discriminator

SAMPLE_RATE = 16000
COMPILATION_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "telugu_jax", "xla")


def use_compilation_cache(path: str = COMPILATION_CACHE_DIR) -> str:
  """Turns on JAX's persistent compilation cache in `path`, unless a directory is already set.

  A directory set before (`JAX_COMPILATION_CACHE_DIR`, or `jax.config`) is kept. Each length
  bucket then compiles once per machine instead of once per process: a later process reads the
  compiled program from disk (keyed by the program, JAX's version and the device). Programs that
  compile faster than `jax_persistent_cache_min_compile_time_secs` (1 s) are not stored.

  Returns:
    The cache directory in use.
  """
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", path)
  return jax.config.jax_compilation_cache_dir


def _as_batch(wave: np.ndarray) -> np.ndarray:
  wave = np.asarray(wave, np.float32)
  if wave.ndim == 3 and wave.shape[1] == 1:
    wave = wave[:, 0]
  if wave.ndim == 1:
    wave = wave[None]
  if wave.ndim != 2:
    raise ValueError(f"expected audio of shape [B, T] or [B, 1, T], got {wave.shape}")
  return wave


def config_hash(codec_kwargs: dict[str, Any]) -> str:
  """A short, stable hash of a codec architecture (stored in code files, checked on decode).

  `upsample="transposed"`, the original's and the default, is left out, so codecs trained
  before the option keep their hash.
  """
  kwargs = {k: v for k, v in codec_kwargs.items()
            if not (k == "upsample" and v == "transposed")}
  canonical = json.dumps({k: list(v) if isinstance(v, tuple) else v
                          for k, v in sorted(kwargs.items())}, sort_keys=True)
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class CodecModel:
  """A loaded codec. See the module docstring for the methods."""

  sample_rate = SAMPLE_RATE

  def __init__(self, codec_kwargs: dict[str, Any], variables: dict[str, Any],
               bucket_seconds: float = 1.0, buckets_per_octave: int = 4):
    use_compilation_cache()
    self.codec_kwargs = dict(codec_kwargs)
    self.model = Codec(**codec_kwargs)
    self.variables = variables
    self.num_quantizers = self.model.num_quantizers
    self.codebook_size = self.model.codebook_size
    self.config_hash = config_hash(self.codec_kwargs)
    self._strides = tuple(self.model.strides)
    self._sample_bucket = max(1, int(bucket_seconds * SAMPLE_RATE))
    self._frame_bucket = max(1, self.num_frames(self._sample_bucket))
    self._per_octave = buckets_per_octave
    self._encode = jax.jit(functools.partial(self.model.apply, method=Codec.encode))
    self._decode = jax.jit(functools.partial(self.model.apply, method=Codec.decode))

  @property
  def variables(self) -> dict[str, Any]:
    """The checkpoint's variables (weight norm as `weight_g`/`weight_v`)."""
    return self._variables

  @variables.setter
  def variables(self, variables: dict[str, Any]) -> None:
    self._variables = jax.device_put(variables)
    # What the compiled programs run on: each weight norm computed once here instead of at
    # every call (it cost batch-1 streaming pushes three quarters of their time).
    self.inference_variables = jax.device_put(
        {**variables, "params": layers.fold_weight_norm(variables["params"])})

  def num_frames(self, num_samples: int) -> int:
    return codec_lib.num_frames(num_samples, self._strides, self.model.causal)

  def num_samples(self, num_frames: int) -> int:
    return codec_lib.num_samples(num_frames, self._strides, self.model.causal)

  def encode_buckets(self, max_seconds: float) -> list[float]:
    """The lengths in seconds that `encode` pads to (each compiles once), up to the first that
    holds `max_seconds`: what a server compiles before it serves."""
    sizes = [self._bucket(1, self._sample_bucket)]
    while sizes[-1] < max_seconds * SAMPLE_RATE:
      sizes.append(self._bucket(sizes[-1] + 1, self._sample_bucket))
    return [size / SAMPLE_RATE for size in sizes]

  def _bucket(self, length: int, unit: int) -> int:
    return bucket_length(length, unit, self._per_octave)

  def stream_encoder(self, **kwargs) -> "streaming.StreamEncoder":
    """A causal codec's streaming encoder (`telugu_jax.inference.streaming.StreamEncoder`).

    Raises:
      ValueError: the codec is the faithful, non-causal one.
    """
    return streaming.StreamEncoder(self, **kwargs)

  def stream_decoder(self, **kwargs) -> "streaming.StreamDecoder | streaming.WindowedDecoder":
    """A streaming decoder: exact for a causal codec (`streaming.StreamDecoder`), windowed with
    left context for the faithful one (`streaming.WindowedDecoder`, approximate; its keyword
    arguments `left_context` and `lookahead`)."""
    if self.model.causal:
      return streaming.StreamDecoder(self, **kwargs)
    return streaming.WindowedDecoder(self, **kwargs)

  def encode(self, wave: np.ndarray) -> np.ndarray:
    """float32 `[B, T]` (or `[B, 1, T]`, or `[T]`) at 16 kHz → int32 codes `[B, n_q, frames]`."""
    wave = _as_batch(wave)
    length = wave.shape[1]
    padded = np.pad(wave, ((0, 0), (0, self._bucket(length, self._sample_bucket) - length)))
    lengths = np.full((wave.shape[0],), length, np.int32)
    codes = self._encode(self.inference_variables, padded, lengths)
    return np.asarray(codes[:, :, : self.num_frames(length)])

  def encode_batch(self, wave: np.ndarray, lengths: np.ndarray) -> jax.Array:
    """Utterances of different lengths, end-padded into one batch → codes of every row.

    The padding is masked per row, so row `i`'s first `num_frames(lengths[i])` frames are the
    codes `encode` gives for `wave[i, :lengths[i]]` alone. Unlike `encode`, the width is not
    bucketed (each new `[B, W]` shape compiles once: the caller chooses its shapes) and the
    result is returned as soon as the computation is dispatched, so the caller can prepare the
    next batch while this one runs (`np.asarray` waits for it).

    Args:
      wave: float32 `[B, W]` at 16 kHz, each row zero-padded after its length.
      lengths: int `[B]` valid samples per row (1 ≤ length ≤ W).

    Returns:
      int32 device array `[B, n_q, num_frames(W)]`.
    """
    wave = _as_batch(wave)
    lengths = np.asarray(lengths, np.int32)
    if lengths.shape != (wave.shape[0],):
      raise ValueError(f"expected {wave.shape[0]} lengths, got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > wave.shape[1]):
      raise ValueError(f"lengths must lie in [1, {wave.shape[1]}], "
                       f"got [{lengths.min()}, {lengths.max()}]")
    return self._encode(self.inference_variables, wave, lengths)

  def decode(self, codes: np.ndarray, levels: int | None = None) -> np.ndarray:
    """int codes `[B, n_q, frames]` → float32 audio `[B, num_samples(frames)]`.

    `levels` decodes only the first `levels` quantizer levels (the sum of their codebook rows, as
    a residual VQ at a lower bitrate); by default all `n_q`.
    """
    codes = np.asarray(codes)
    if codes.ndim == 2:
      codes = codes[None]
    if codes.ndim != 3 or codes.shape[1] != self.num_quantizers:
      raise ValueError(f"expected codes of shape [B, {self.num_quantizers}, frames], "
                       f"got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
      raise ValueError(f"codes must lie in [0, {self.codebook_size}), "
                       f"got [{codes.min()}, {codes.max()}]")
    if levels is not None:
      if not 1 <= levels <= self.num_quantizers:
        raise ValueError(f"levels must lie in [1, {self.num_quantizers}], got {levels}")
      codes = codes[:, :levels]
    frames = codes.shape[2]
    padded = np.pad(codes.astype(np.int32),
                    ((0, 0), (0, 0), (0, self._bucket(frames, self._frame_bucket) - frames)))
    lengths = np.full((codes.shape[0],), frames, np.int32)
    wave = self._decode(self.inference_variables, padded, lengths)
    return np.asarray(wave[:, : self.num_samples(frames)])

  def reconstruct(self, wave: np.ndarray) -> np.ndarray:
    """The eval-mode forward: encode, quantize, decode, trimmed or zero-padded to the input."""
    wave = _as_batch(wave)
    recon = self.decode(self.encode(wave))
    length = wave.shape[1]
    return recon[:, :length] if recon.shape[1] >= length else np.pad(
        recon, ((0, 0), (0, length - recon.shape[1])))


class DiscriminatorModel:
  """A loaded discriminator: `disc(wave)` → (8 logits `[B, -1]`, 8 lists of 6 feature maps)."""

  def __init__(self, disc_kwargs: dict[str, Any], params: dict[str, Any]):
    use_compilation_cache()
    self.model = Discriminator(**disc_kwargs)
    self.params = jax.device_put(params)
    self._apply = jax.jit(self.model.apply)

  def __call__(self, wave: np.ndarray) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    logits, features = self._apply({"params": self.params}, _as_batch(wave))
    return ([np.asarray(x) for x in logits],
            [[np.asarray(f) for f in maps] for maps in features])


def _kwargs(meta: dict[str, Any], key: str, path: str) -> dict[str, Any]:
  if meta.get("task") != "codec" or key not in meta:
    raise ValueError(f"{path}: not a codec checkpoint with a {key} (task {meta.get('task')!r}, "
                     f"holds {sorted(k for k in meta if k in ('codec', 'discriminator'))})")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in meta[key].items()}


def load_codec(path: str, step: int | None = None, bucket_seconds: float = 1.0,
               buckets_per_octave: int = 4) -> CodecModel:
  """Loads the codec of a converted checkpoint or a training workdir (latest step by default).

  `encode` and `decode` pad their input to a length bucket and compile once per bucket (kept in
  JAX's persistent cache): `buckets_per_octave` sizes in each doubling from `bucket_seconds`
  (4: 1, 1.25, 1.5, 1.75, 2, 2.5 ... s; padding ~9% of the length on average, 25% at most).
  """
  root = checkpoints.resolve(path)
  meta = checkpoints.read_meta(root, step)
  kwargs = _kwargs(meta, "codec", path)
  abstract = jax.eval_shape(
      lambda: Codec(**kwargs).init(jax.random.key(0), jnp.zeros((1, SAMPLE_RATE))))
  gen = checkpoints.restore_subtree(root, {"gen": abstract}, step)["gen"]
  return CodecModel(kwargs, gen, bucket_seconds, buckets_per_octave)


def load_discriminator(path: str, step: int | None = None) -> DiscriminatorModel:
  """Loads the discriminator of a converted GAN checkpoint or a training workdir."""
  root = checkpoints.resolve(path)
  meta = checkpoints.read_meta(root, step)
  kwargs = _kwargs(meta, "discriminator", path)
  abstract = jax.eval_shape(
      lambda: Discriminator(**kwargs).init(jax.random.key(0), jnp.zeros((1, SAMPLE_RATE))))
  return DiscriminatorModel(kwargs, checkpoints.restore_subtree(root, {"disc": abstract},
                                                                  step)["disc"]["params"])
