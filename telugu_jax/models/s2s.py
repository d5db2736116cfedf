"""S2S transformer: a Conformer encoder over input codes, a transformer decoder over output codes.

Codes are `[B, Q, T]` integers (Q = `num_quantizers` codec levels); a frame's embedding is the
concatenation of one `D/Q`-wide embedding per level, plus a speaker/emotion style vector. The
decoder predicts the next frame's Q codes with one output head per level.

Two variants share the original's parameter names (`S2SConfig.variant`):

- "original" reproduces `s2s_transformer.py` exactly, defects included, for parity and for
  converted checkpoints: no rotary positions are applied; the decoder's "cross-attention" attends
  over the decoder stream itself with no mask (teacher forcing sees the future); the conv module
  adds its input and the block adds it again; `layer_scale` multiplies the whole stream; the
  encoder is full-context with a centred depthwise conv; the start frame and padding reuse code 0.
- "fixed" (the default): rotary positions at absolute positions (offset by the cache index when
  decoding step by step); true cross-attention (queries from the decoder, keys and values from the
  encoder output through the same `qkv` weight); causal decoder self-attention; the conv
  module's residual added once; LayerScale on each branch output; end-of-speech, start and padding
  ids after the codes (`vocab_size`, `+1`, `+2`); an optional per-level delay pattern; a
  streaming encoder (chunked attention with lookahead in the first layer, causal depthwise conv)
  whose chunk-by-chunk computation (`S2STransformer.encode_chunks`) equals the masked full forward.

Activations are `[B, T, D]`; attention queries, keys and values `[B, H, T, hd]`. Norms use
PyTorch's eps 1e-5 and GELU is the exact erf form, as in the original. Decoding and streaming
keep explicit key/value caches (`S2STransformer.init_cache`, `init_encoder_state`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from telugu_jax.models.layers import TORCH_NORM_EPS, matmul

VARIANTS = ("original", "fixed")
# The original fills masked attention scores with -1e9 (not -inf); fully masked rows stay finite.
MASK_VALUE = -1e9
# Caches are read in blocks of this many positions (and sized in multiples of it). XLA:CPU copies
# each block before its dot: smaller blocks waste less on a partly filled last block, larger ones
# run fewer loop iterations. Of 32, 64, 128 and 256, 128 decoded fastest on the 2-core CPU.
ATTENTION_BLOCK = 128
# XLA:CPU runs a matrix-vector product (one frame of batch-1 decoding) on one core; split into a
# batch of this many products over slices of the contraction, it runs on as many cores
# (`_dense_dot_general`).
MATVEC_SPLITS = 2


@dataclasses.dataclass(frozen=True)
class S2SConfig:
  """Model configuration; the defaults are the original's `S2SConfig`, with variant "fixed".

  Attributes:
    delays: per-level delay in frames (fixed variant only), e.g. `(0, 1, 1, 1, 1, 1, 1, 1)`: level
      q at decoder step t carries frame `t - delays[q]`. Empty means no delay. Level 0 must have
      delay 0: it carries the end-of-speech decision.
    rope_base: base of the rotary frequencies, `1 / rope_base^(2i / head_dim)` (the original's
      `rope.inv_freq` buffer).
    layer_scale_init: initial LayerScale value (the original's `layer_scale` init).
    max_seq_len: the original's setting; no module depends on it (rotary positions need no table).
    question_ctc_vocab: 0, or the classes (blank included) of an auxiliary head on the encoder
      output that reads the question's transcript, trained with CTC (training only; fixed
      variant; `data.transcripts.VOCAB_SIZE`).
  """

  hidden_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  ffn_dim: int = 2048
  conv_kernel_size: int = 31
  conv_expansion: int = 2
  chunk_size: int = 20
  lookahead: int = 4
  vocab_size: int = 1024
  num_quantizers: int = 8
  max_seq_len: int = 4096
  num_speakers: int = 4
  num_emotions: int = 9
  dropout: float = 0.1
  variant: str = "fixed"
  delays: tuple[int, ...] = ()
  rope_base: float = 10000.0
  layer_scale_init: float = 0.1
  question_ctc_vocab: int = 0

  def __post_init__(self):
    object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))
    if self.variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
    if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
      raise ValueError("hidden_dim must be num_heads times an even head dimension")
    if self.hidden_dim % self.num_quantizers:
      raise ValueError("hidden_dim must be a multiple of num_quantizers")
    if not 0 <= self.lookahead <= self.chunk_size:
      raise ValueError("lookahead must be between 0 and chunk_size")
    if self.conv_kernel_size % 2 == 0:
      raise ValueError("conv_kernel_size must be odd (the original pads kernel // 2 each side)")
    if self.delays:
      if len(self.delays) != self.num_quantizers:
        raise ValueError(f"delays needs one entry per level ({self.num_quantizers})")
      if self.delays[0] != 0 or min(self.delays) < 0:
        raise ValueError(f"delays must be >= 0 with delays[0] == 0, got {self.delays}")
      if self.is_original and any(self.delays):
        raise ValueError("the original variant has no delay pattern")
    if self.question_ctc_vocab and self.is_original:
      raise ValueError("the original variant has no question CTC head")

  @property
  def is_original(self) -> bool:
    return self.variant == "original"

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.num_heads

  @property
  def level_delays(self) -> tuple[int, ...]:
    return self.delays or (0,) * self.num_quantizers

  @property
  def max_delay(self) -> int:
    return max(self.level_delays)

  @property
  def eos_id(self) -> int | None:
    """End-of-speech id (an output class), or None: the original has no end token."""
    return None if self.is_original else self.vocab_size

  @property
  def start_id(self) -> int:
    """Decoder input before the first frame (and before a delayed level starts)."""
    return 0 if self.is_original else self.vocab_size + 1

  @property
  def pad_id(self) -> int:
    """Padding id of input and decoder-input codes (the original reuses code 0)."""
    return 0 if self.is_original else self.vocab_size + 2

  @property
  def num_embeddings(self) -> int:
    return self.vocab_size if self.is_original else self.vocab_size + 3

  @property
  def num_outputs(self) -> int:
    """Classes per output head: the codes, plus end-of-speech in the fixed variant."""
    return self.vocab_size if self.is_original else self.vocab_size + 1

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict (for checkpoint metadata); `S2SConfig.from_dict` inverts it."""
    d = dataclasses.asdict(self)
    d["delays"] = list(self.delays)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> S2SConfig:
    return cls(**{k: tuple(v) if k == "delays" else v for k, v in d.items()})


# ----------------------------------------------------------------------------------------------
# Pure helpers: positions, masks, delay pattern, teacher forcing.


def rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) of `x [B, H, T, hd]` at `positions [T]`."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / base ** (np.arange(0, 2 * half, 2, dtype=np.float32) / (2 * half))
  angles = positions.astype(jnp.float32)[:, None] * inv_freq  # [T, hd/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def chunk_mask(length: int, chunk_size: int, lookahead: int) -> np.ndarray:
  """`[T, T]` bool: frame i sees frame j iff j < (i // chunk_size + 1) * chunk_size + lookahead."""
  limit = (np.arange(length) // chunk_size + 1) * chunk_size + lookahead
  return np.arange(length)[None, :] < limit[:, None]


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def prefix_attention(q: jax.Array, k: jax.Array, v: jax.Array, limit: jax.Array) -> jax.Array:
  """Softmax attention of `q [B, H, Tq, hd]` over a prefix of a cache `k, v [B, H, L, hd]`.

  Query i sees the positions `< limit[:, i]` (`limit [B or 1, Tq]`, at least 1); L is a multiple
  of `ATTENTION_BLOCK`. Only the blocks below `max(limit)` are read, with an online softmax, so
  a long, mostly empty cache costs little per step, and XLA updates the cache in place (a dot
  reading the whole of a cache that the same loop iteration updates makes XLA:CPU copy it).
  Returns `[B, Tq, H * hd]`.
  """
  b, h, tq, hd = q.shape
  limit = limit[:, None, :, None]  # [B or 1, 1, Tq, 1]
  q = q / np.sqrt(hd)

  def block(i, carry):
    running_max, total, acc = carry
    start = i * ATTENTION_BLOCK
    kb, vb = (jax.lax.dynamic_slice_in_dim(x, start, ATTENTION_BLOCK, axis=2) for x in (k, v))
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, kb)
    scores = jnp.where(start + jnp.arange(ATTENTION_BLOCK) < limit, scores, -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(scores, axis=-1, keepdims=True))
    probs, rescale = jnp.exp(scores - new_max), jnp.exp(running_max - new_max)
    return (new_max, total * rescale + jnp.sum(probs, axis=-1, keepdims=True),
            acc * rescale + jnp.einsum("bhqk,bhkd->bhqd", probs, vb))

  init = (jnp.full((b, h, tq, 1), -jnp.inf, q.dtype), jnp.zeros((b, h, tq, 1), q.dtype),
          jnp.zeros((b, h, tq, hd), q.dtype))
  num_blocks = (jnp.max(limit) + ATTENTION_BLOCK - 1) // ATTENTION_BLOCK
  _, total, acc = jax.lax.fori_loop(0, num_blocks, block, init)
  out = jnp.swapaxes(acc / total, 1, 2)  # [B, Tq, H, hd]
  return out.reshape(b, tq, h * hd)


def delay_codes(codes: jax.Array, delays: tuple[int, ...], before: int, after: int) -> jax.Array:
  """Shifts level q right by `delays[q]`: `[B, Q, T]` → `[B, Q, T + max(delays)]`.

  Positions before a level starts hold `before`, positions after it ends hold `after`.
  """
  max_delay = max(delays)
  levels = [jnp.pad(codes[:, q], ((0, 0), (d, 0)), constant_values=before) for q, d in
            enumerate(delays)]
  return jnp.stack([jnp.pad(x, ((0, 0), (0, max_delay - d)), constant_values=after)
                    for x, d in zip(levels, delays)], axis=1)


def undelay(x: jax.Array, delays: tuple[int, ...]) -> jax.Array:
  """Inverse of `delay_codes` on `[B, Q, T + max(delays), ...]` → `[B, Q, T, ...]`."""
  length = x.shape[2] - max(delays)
  return jnp.stack([x[:, q, d:d + length] for q, d in enumerate(delays)], axis=1)


class TeacherForcing(NamedTuple):
  """Decoder inputs and targets of a batch under a variant's convention, all `[B, Q, L]`."""
  decoder_input: jax.Array
  targets: jax.Array
  weights: jax.Array  # 1.0 where the target counts in the loss


def teacher_forcing(config: S2SConfig, codes: jax.Array,
                    lengths: jax.Array | None = None) -> TeacherForcing:
  """The variant's shift-right convention for target codes `[B, Q, T]`.

  original: `L = T`; the decoder input is the targets shifted right with code 0 as the start
    frame; every position counts (padding is code 0, as in the original).
  fixed: the frames `< lengths` (default all T) are followed by an end-of-speech frame and padding,
    delayed level by level (`L = T + 1 + max_delay`); the decoder input starts with a start frame;
    start and padding positions do not count.
  """
  if config.is_original:
    start = jnp.full_like(codes[..., :1], config.start_id)
    return TeacherForcing(jnp.concatenate([start, codes[..., :-1]], axis=-1), codes,
                          jnp.ones(codes.shape, jnp.float32))
  b, _, t = codes.shape
  lengths = jnp.full((b,), t, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
  frame = jnp.arange(t + 1)[None, None, :]
  length = lengths[:, None, None]
  padded = jnp.pad(codes, ((0, 0), (0, 0), (0, 1)))
  with_end = jnp.where(frame < length, padded,
                       jnp.where(frame == length, config.eos_id, config.pad_id))
  delayed = delay_codes(with_end, config.level_delays, config.start_id, config.pad_id)
  start = jnp.full_like(delayed[..., :1], config.start_id)
  decoder_input = jnp.concatenate([start, delayed[..., :-1]], axis=-1)
  counts = delayed <= config.eos_id
  return TeacherForcing(decoder_input, jnp.where(counts, delayed, 0), counts.astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# Layers.


def _dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                       preferred_element_type=None) -> jax.Array:
  """`lax.dot_general` for `nn.Dense` (`lhs [..., K]` times `rhs [K, N]`), through
  `layers.matmul` (its weight gradient at XLA:CPU's matmul rate). On CPU a single row is computed
  as `MATVEC_SPLITS` products of K/`MATVEC_SPLITS` slices, then summed (only the order of the
  float additions differs)."""
  k = lhs.shape[-1]
  if (dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2
      or precision is not None or preferred_element_type is not None):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  if lhs.size != k or k % MATVEC_SPLITS or jax.default_backend() != "cpu":
    return matmul(lhs, rhs)
  g = MATVEC_SPLITS
  parts = jnp.einsum("gk,gkn->gn", lhs.reshape(g, k // g), rhs.reshape(g, k // g, -1))
  return jnp.sum(parts, axis=0).reshape(*lhs.shape[:-1], -1)


def _dense(features: int, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, dot_general=_dense_dot_general, name=name)


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=TORCH_NORM_EPS, name=name)


def _gelu(x: jax.Array) -> jax.Array:
  return nn.gelu(x, approximate=False)


def _mix32(h: jax.Array) -> jax.Array:
  """A 32-bit integer hash (xor-shift-multiply, "lowbias32"): each input bit flips about half of
  the output bits."""
  h = (h ^ (h >> np.uint32(16))) * np.uint32(0x7FEB352D)
  h = (h ^ (h >> np.uint32(15))) * np.uint32(0x846CA68B)
  return h ^ (h >> np.uint32(16))


def keep_mask(rng: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
  """A Bernoulli(`keep_prob`) mask of `shape` under the key `rng`, in one fused pass.

  Counter-based, as `jax.random.bernoulli`: each element's flat index is hashed with each 32-bit
  word of the key's data in turn (`h = _mix32(h ^ word)`), and the element is kept where the hash
  falls below `keep_prob * 2**32`. XLA:CPU recomputes the hash in every fusion that reads the mask
  (two to four per dropout site in the training step); this hash takes a tenth of the integer
  operations of threefry's 20 rounds, which cost 4% of the original model's step. The masks are
  not `jax.random.bernoulli`'s (nor were they ever PyTorch's).
  """
  size = math.prod(shape)
  if size > 2**32:
    raise ValueError(f"keep_mask counts elements in 32 bits; shape {shape} has {size}")
  h = jax.lax.iota(np.uint32, size).reshape(shape)
  for word in jax.random.key_data(rng).reshape(-1):
    h = _mix32(h ^ word)
  return h < np.uint32(min(round(keep_prob * 2**32), 2**32 - 1))


class Dropout(nn.Module):
  """`nn.Dropout` (inverted dropout from the module's `make_rng("dropout")` stream) with the
  masks drawn by `keep_mask`."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    # XLA:CPU recomputes the hash in each fusion that reads the mask (in the training step two
    # to four: forward, backward, and the transposed copies made for weight gradients).
    mask = keep_mask(self.make_rng("dropout"), keep, x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


class BatchNorm1d(nn.Module):
  """PyTorch's `BatchNorm1d` over the channels of `[B, T, C]`.

  Training normalises with the batch statistics (biased variance) over the unmasked frames and
  updates the running statistics with PyTorch's momentum 0.1 and the unbiased variance; evaluation
  uses the running statistics. Parameters `scale`/`bias`, running statistics `mean`/`var` in the
  "batch_stats" collection.
  """

  momentum: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool,
               mask: jax.Array | None = None) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
    running_var = self.variable("batch_stats", "var", jnp.ones, (c,))
    if use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      w = jnp.ones(x.shape[:-1], x.dtype) if mask is None else mask.astype(x.dtype)  # [B, T]
      n = jnp.sum(w)
      mean = jnp.einsum("bt,btc->c", w, x) / n
      var = jnp.einsum("bt,btc->c", w, jnp.square(x - mean)) / n
      if not self.is_initializing():
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * mean
        running_var.value = (1 - m) * running_var.value + m * var * n / jnp.maximum(n - 1, 1)
    return (x - mean) * jax.lax.rsqrt(var + TORCH_NORM_EPS) * scale + bias


def _shifted_products(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`sum_i x[:, i:i + t] * kernel[i]` over the K rows of `kernel [K, C]`, `t = T - K + 1`, in a
  loop over the taps that adds one shifted product to the stored sum per pass.

  Written as one expression, XLA:CPU fuses the K products into a loop that runs 2-3x slower
  than these K passes (`[4, 200, 1024]`, K = 31: 5.7 against 1.6 ms), and copies that loop into
  every consumer: BatchNorm's statistics, the normalisation, SiLU and their gradients, eight
  fusions per conformer layer in the training step.
  """
  t = x.shape[1] - kernel.shape[0] + 1
  kernel = jnp.asarray(kernel)  # (NumPy weights cannot be indexed by the loop's counter)

  def tap(i, total):
    return total + jax.lax.dynamic_slice_in_dim(x, i, t, axis=1) * kernel[i]

  return jax.lax.fori_loop(0, kernel.shape[0], tap,
                           jnp.zeros((x.shape[0], t) + x.shape[2:], jnp.result_type(x, kernel)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def depthwise_conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                     padding: tuple[int, int]) -> jax.Array:
  """Depthwise convolution of `x [B, T, C]` with `kernel [K, C]` and `bias [C]` after
  `(left, right)` zero padding, as a sum of K shifted products (`_shifted_products`; XLA's
  grouped convolution with one channel per group is far slower on CPU, forward and backward).

  The gradient is written out: differentiated automatically, XLA stores the K shifted copies of
  the input for the kernel gradient and recomputes the incoming gradient in each of K reductions.
  """
  return _shifted_products(jnp.pad(x, ((0, 0), padding, (0, 0))), kernel) + bias


def _depthwise_conv1d_fwd(x, kernel, bias, padding):
  return depthwise_conv1d(x, kernel, bias, padding), (x, kernel)


def _depthwise_conv1d_bwd(padding, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  left, right = padding
  # The input gradient: the transposed convolution, i.e. the flipped kernel over the output
  # gradient, padded so that it covers exactly the unpadded input frames.
  dx = _shifted_products(jnp.pad(g, ((0, 0), (k - 1 - left, k - 1 - right), (0, 0))), kernel[::-1])
  padded = jnp.pad(x, ((0, 0), padding, (0, 0)))

  def tap(i, dk):  # dk[i] = sum over batch and time of padded[:, t + i] * g[:, t]
    window = jax.lax.dynamic_slice_in_dim(padded, i, g.shape[1], axis=1)
    return dk.at[i].set(jnp.sum(window * g, axis=(0, 1)).astype(dk.dtype))

  dk = jax.lax.fori_loop(0, k, tap, jnp.zeros_like(kernel))
  return dx.astype(x.dtype), dk, jnp.sum(g, axis=(0, 1)).astype(kernel.dtype)


depthwise_conv1d.defvjp(_depthwise_conv1d_fwd, _depthwise_conv1d_bwd)


class DepthwiseConv1d(nn.Module):
  """`Conv1d(C, C, K, groups=C)` on `[B, T, C]` with explicit `(left, right)` zero padding.

  Parameters `kernel [K, 1, C]` (PyTorch's `[C, 1, K]` transposed) and `bias [C]`.
  """

  kernel_size: int

  @nn.compact
  def __call__(self, x: jax.Array, padding: tuple[int, int]) -> jax.Array:
    c, k = x.shape[-1], self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, 1, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return depthwise_conv1d(x, kernel[:, 0], bias, padding)


class QKVProjection(nn.Module):
  """The original's `qkv = Linear(D, 3D)`, held as three `[D, D]` projections `q`, `k`, `v`.

  `parts` selects which to compute, so that cross-attention takes queries from one stream and
  keys/values from another with the same weight. Returns one `[B, H, T, hd]` array per part.
  """

  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, parts: slice = slice(0, 3)) -> list[jax.Array]:
    b, t, d = x.shape
    return [jnp.swapaxes(_dense(d, name)(x).reshape(b, t, self.num_heads, -1), 1, 2)
            for name in ("q", "k", "v")[parts]]


class Attention(nn.Module):
  """Multi-head attention with the original's `qkv` and `out` projections.

  Self-attention: `__call__` over a whole sequence, `cached` for new frames over a key/value
  cache. True cross-attention (fixed variant): `memory` projects the encoder output to keys and
  values once, `cross` attends to them. Rotary positions are applied in self-attention of the
  fixed variant only.
  """

  config: S2SConfig

  def setup(self):
    self.qkv = QKVProjection(self.config.num_heads)
    self.out = _dense(self.config.hidden_dim)
    self.attn_dropout = Dropout(self.config.dropout)

  def _rotate(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    if self.config.is_original:  # defect 1: the original never applies its rotary frequencies
      return x
    return rotary(x, positions, self.config.rope_base)

  def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
              deterministic: bool) -> jax.Array:
    """q `[B, H, Tq, hd]`, k/v `[B, H, Tk, hd]`, mask broadcastable to `[B, H, Tq, Tk]`."""
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
      scores = jnp.where(mask, scores, MASK_VALUE)
    probs = self.attn_dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
    out = jnp.einsum("bhqk,bhkd->bqhd", probs, v)
    return self.out(out.reshape(*out.shape[:2], -1))

  def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool = True) -> jax.Array:
    positions = jnp.arange(x.shape[1])
    q, k, v = self.qkv(x)
    return self._attend(self._rotate(q, positions), self._rotate(k, positions), v, mask,
                        deterministic)

  def cached(self, x: jax.Array, cache: dict[str, jax.Array], index: jax.Array,
             key_limit: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Self-attention of new frames `x [B, T, D]` at positions `index + arange(T)` over a cache.

    All T frames' keys/values are written to `cache["k"|"v"] [B, H, L, hd]` at `index`; the first
    `Tq` frames attend, query i to the cache positions `< key_limit[:, i]` (`key_limit [B or 1,
    Tq]`, see `prefix_attention`). Evaluation only. Returns `[B, Tq, D]` and the updated cache.
    """
    positions = index + jnp.arange(x.shape[1])
    q, k, v = self.qkv(x)
    k = self._rotate(k, positions)
    cache = {name: jax.lax.dynamic_update_slice_in_dim(cache[name], new, index, axis=2)
             for name, new in (("k", k), ("v", v))}
    q = self._rotate(q, positions)[:, :, :key_limit.shape[-1]]
    return self.out(prefix_attention(q, cache["k"], cache["v"], key_limit)), cache

  def memory(self, memory: jax.Array) -> dict[str, jax.Array]:
    """Cross-attention keys/values `[B, H, S, hd]` of the encoder output `memory [B, S, D]`."""
    k, v = self.qkv(memory, slice(1, 3))
    return {"k": k, "v": v}

  def cross(self, x: jax.Array, memory_kv: dict[str, jax.Array], memory_mask: jax.Array,
            deterministic: bool = True) -> jax.Array:
    """Queries from `x [B, T, D]`, keys/values from `memory_kv`; `memory_mask [B, S]`."""
    (q,) = self.qkv(x, slice(0, 1))
    return self._attend(q, memory_kv["k"], memory_kv["v"], memory_mask[:, None, None, :],
                        deterministic)


class FeedForward(nn.Module):
  """`[LayerNorm] → Linear(D, F) → act → Dropout → Linear(F, D) → Dropout`."""

  config: S2SConfig
  activation: str  # "silu" (encoder) or "gelu" (decoder)
  pre_norm: bool

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    if self.pre_norm:
      x = _layer_norm("norm")(x)
    x = _dense(self.config.ffn_dim, "fc1")(x)
    x = nn.silu(x) if self.activation == "silu" else _gelu(x)
    x = Dropout(self.config.dropout)(x, deterministic=deterministic)
    x = _dense(self.config.hidden_dim, "fc2")(x)
    return Dropout(self.config.dropout)(x, deterministic=deterministic)


class ConvModule(nn.Module):
  """`LayerNorm → Linear(D, 2E) → (x, gate) → depthwise conv(x) → BatchNorm → SiLU → x·σ(gate)
  → Linear(E, D) → Dropout`, with `E = conv_expansion * D`.

  The original centres the depthwise conv and returns `input + x` (the block adds the input
  again, defect 3); the fixed variant is causal and returns the branch alone.
  """

  config: S2SConfig

  def setup(self):
    c = self.config
    self.layer_norm = _layer_norm()
    self.pointwise_conv1 = _dense(2 * c.conv_expansion * c.hidden_dim)
    self.depthwise_conv = DepthwiseConv1d(c.conv_kernel_size)
    self.norm = BatchNorm1d()
    self.pointwise_conv2 = _dense(c.hidden_dim)
    self.dropout = Dropout(c.dropout)

  def _gated(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.split(self.pointwise_conv1(self.layer_norm(x)), 2, axis=-1)

  def _finish(self, x: jax.Array, h: jax.Array, gate: jax.Array, mask: jax.Array | None,
              deterministic: bool) -> jax.Array:
    h = nn.silu(self.norm(h, use_running_average=deterministic, mask=mask)) * nn.sigmoid(gate)
    h = self.dropout(self.pointwise_conv2(h), deterministic=deterministic)
    return x + h if self.config.is_original else h

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    k = self.config.conv_kernel_size
    h, gate = self._gated(x)
    h = self.depthwise_conv(h, (k // 2, k // 2) if self.config.is_original else (k - 1, 0))
    return self._finish(x, h, gate, mask, deterministic)

  def stream(self, x: jax.Array, history: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Causal conv of a chunk `x [B, C, D]` after `history [B, K-1, E]` (the previous depthwise
    inputs); returns the branch output and the history after the chunk."""
    h, gate = self._gated(x)
    window = jnp.concatenate([history, h], axis=1)  # [B, K-1+C, E]
    new_history = window[:, x.shape[1]:]
    return self._finish(x, self.depthwise_conv(window, (0, 0)), gate, None, True), new_history


class ConformerLayer(nn.Module):
  """Macaron Conformer block: ½FFN, self-attention, conv module, ½FFN.

  original: `x += ½ffn1(x); x += attn; x += conv(x)` (conv adds x too) `; x += ½ffn2(x);
  x *= layer_scale`. fixed: each branch output is multiplied by its own LayerScale vector
  (`ffn1_scale`, `attn_scale`, `conv_scale`, `ffn2_scale`) before it is added.
  """

  config: S2SConfig

  def setup(self):
    c = self.config
    self.ffn1 = FeedForward(c, "silu", pre_norm=True)
    self.attn_norm = _layer_norm()
    self.self_attn = Attention(c)
    self.conv = ConvModule(c)
    self.ffn2 = FeedForward(c, "silu", pre_norm=True)
    init = nn.initializers.constant(c.layer_scale_init)
    names = ("layer_scale",) if c.is_original else (
        "ffn1_scale", "attn_scale", "conv_scale", "ffn2_scale")
    self.scales = {n: self.param(n, init, (c.hidden_dim,)) for n in names}

  def _scale(self, name: str, branch: jax.Array) -> jax.Array:
    return branch if self.config.is_original else self.scales[name] * branch

  def __call__(self, x: jax.Array, attn_mask: jax.Array | None, frame_mask: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    x = x + self._scale("ffn1_scale", 0.5 * self.ffn1(x, deterministic))
    x = x + self._scale("attn_scale", self.self_attn(self.attn_norm(x), attn_mask, deterministic))
    x = x + self._scale("conv_scale", self.conv(x, frame_mask, deterministic))
    x = x + self._scale("ffn2_scale", 0.5 * self.ffn2(x, deterministic))
    return x * self.scales["layer_scale"] if self.config.is_original else x

  def stream(self, x: jax.Array, state: dict[str, jax.Array], index: jax.Array,
             key_limit: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Fixed variant, evaluation: a block of frames. `x [B, T + extra, D]` holds T frames
    and `extra` lookahead frames, which only contribute attention keys; frame i attends to the
    cached positions `< key_limit[:, i]` (`key_limit [B, T]`). Returns `[B, T, D]`, new state."""
    t = key_limit.shape[-1]
    x = x + self._scale("ffn1_scale", 0.5 * self.ffn1(x))
    attn, kv = self.self_attn.cached(self.attn_norm(x), {"k": state["k"], "v": state["v"]},
                                     index, key_limit)
    x = x[:, :t] + self._scale("attn_scale", attn)
    conv, history = self.conv.stream(x, state["conv"])
    x = x + self._scale("conv_scale", conv)
    x = x + self._scale("ffn2_scale", 0.5 * self.ffn2(x))
    return x, {**kv, "conv": history}


class DecoderLayer(nn.Module):
  """`x += self_attn(ln1(x)); x += cross_attn(ln2(x)); x += ffn(ln3(x))`.

  The original's `cross_attn` is unmasked self-attention over the decoder stream (defect 2); the
  fixed variant's takes keys and values from the encoder output.
  """

  config: S2SConfig

  def setup(self):
    c = self.config
    self.ln1, self.ln2, self.ln3 = _layer_norm(), _layer_norm(), _layer_norm()
    self.self_attn = Attention(c)
    self.cross_attn = Attention(c)
    self.ffn = FeedForward(c, "gelu", pre_norm=False)

  def __call__(self, x: jax.Array, memory: jax.Array, memory_mask: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    t = x.shape[1]
    x = x + self.self_attn(self.ln1(x), np.tril(np.ones((t, t), bool)), deterministic)
    if self.config.is_original:
      x = x + self.cross_attn(self.ln2(x), None, deterministic)
    else:
      x = x + self.cross_attn.cross(self.ln2(x), self.cross_attn.memory(memory), memory_mask,
                                    deterministic)
    return x + self.ffn(self.ln3(x), deterministic)

  def memory(self, memory: jax.Array) -> dict[str, jax.Array]:
    return self.cross_attn.memory(memory)

  def step(self, x: jax.Array, cache: dict[str, Any], index: jax.Array,
           memory_mask: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """One frame `x [B, 1, D]` at decoder position `index`, evaluation.

    `cache`: `{"self": {"k", "v"} [B, H, L, hd], "memory": {"k", "v"} [B, H, S, hd]}` (no
    "memory" in the original, whose per-frame "cross-attention" sees only the current frame);
    `memory_mask [B, S]`.
    """
    attn, self_kv = self.self_attn.cached(self.ln1(x), cache["self"], index,
                                          jnp.reshape(index + 1, (1, 1)))
    x = x + attn
    if self.config.is_original:
      x = x + self.cross_attn(self.ln2(x), None)
    else:
      x = x + self.cross_attn.cross(self.ln2(x), cache["memory"], memory_mask)
    return x + self.ffn(self.ln3(x)), {**cache, "self": self_kv}


class StyleEmbedding(nn.Module):
  """`style_mix(concat(emotion_embed, speaker_embed))` with `style_mix` = Linear → LayerNorm →
  GELU → Dropout (here `mix`, `mix_norm`); `[B, D]`."""

  config: S2SConfig

  @nn.compact
  def __call__(self, speaker: jax.Array, emotion: jax.Array, deterministic: bool = True
               ) -> jax.Array:
    c = self.config
    style = jnp.concatenate([nn.Embed(c.num_emotions, c.hidden_dim, name="emotion_embed")(emotion),
                             nn.Embed(c.num_speakers, c.hidden_dim, name="speaker_embed")(speaker)],
                            axis=-1)
    style = _gelu(_layer_norm("mix_norm")(_dense(c.hidden_dim, "mix")(style)))
    return Dropout(c.dropout)(style, deterministic=deterministic)  # [B, D]


class S2STransformer(nn.Module):
  """The S2S model. Variables: "params" and "batch_stats" (the conv modules' BatchNorm).

  Entry points (call with `model.apply(variables, ..., method=...)`):
    `__call__`: teacher-forced logits from input codes and decoder-input codes.
    `style`, `encode`, `decode`: the pieces of `__call__`.
    `encode_chunks`: one step of the streaming encoder (fixed variant).
    `init_cache`, `decode_step`: single-frame decoding over an explicit KV cache.
  """

  config: S2SConfig

  def setup(self):
    c = self.config
    self.token_embed = [nn.Embed(c.num_embeddings, c.hidden_dim // c.num_quantizers)
                        for _ in range(c.num_quantizers)]
    self.style_embed = StyleEmbedding(c)
    self.encoder_layers = [ConformerLayer(c) for _ in range(c.num_encoder_layers)]
    self.encoder_norm = _layer_norm()
    self.decoder_layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
    self.decoder_norm = _layer_norm()
    self.output_heads = [_dense(c.num_outputs) for _ in range(c.num_quantizers)]
    if c.question_ctc_vocab:
      self.question_ctc_head = _dense(c.question_ctc_vocab)

  def _embed(self, codes: jax.Array, style: jax.Array) -> jax.Array:
    """`[B, Q, T]` codes → `[B, T, D]` concatenated level embeddings plus the style vector."""
    x = jnp.concatenate([emb(codes[:, q]) for q, emb in enumerate(self.token_embed)], axis=-1)
    return x + style[:, None, :]

  def _heads(self, x: jax.Array) -> jax.Array:
    """`[B, T, D]` → logits `[B, Q, T, V]`."""
    x = self.decoder_norm(x)
    return jnp.stack([head(x) for head in self.output_heads], axis=1)

  def style(self, speaker: jax.Array, emotion: jax.Array, deterministic: bool = True
            ) -> jax.Array:
    """Speaker `[B]` and emotion `[B]` ids → style vector `[B, D]`."""
    return self.style_embed(speaker, emotion, deterministic)

  def encode(self, input_codes: jax.Array, style: jax.Array, deterministic: bool = True
             ) -> tuple[jax.Array, jax.Array]:
    """Full forward of the encoder: `[B, Q, S]` → output `[B, S, D]` and frame mask `[B, S]`.

    original: full-context attention, no mask (the mask returned is all true). fixed: frames
    equal to the padding id (level 0) are masked out as keys; attention is chunked (the first
    layer with `lookahead` frames of lookahead, later layers without, so the encoder as a whole
    looks `lookahead` frames ahead of the chunk).
    """
    c = self.config
    x = self._embed(input_codes, style)
    s = x.shape[1]
    frame_mask = input_codes[:, 0] != c.pad_id if not c.is_original else jnp.ones((x.shape[0], s),
                                                                                  bool)
    for i, layer in enumerate(self.encoder_layers):
      if c.is_original:
        x = layer(x, None, None, deterministic)
      else:
        visible = chunk_mask(s, c.chunk_size, c.lookahead if i == 0 else 0)
        attn_mask = visible[None, None] & frame_mask[:, None, None, :]
        x = layer(x, attn_mask, frame_mask, deterministic)
    return self.encoder_norm(x), frame_mask

  def encode_chunks(self, codes: jax.Array, style: jax.Array, state: dict[str, Any],
                    available: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """One step of the streaming encoder (fixed variant, evaluation): n whole chunks.

    Args:
      codes: `[B, Q, n * C + lookahead]`: the next n chunks of C = `chunk_size` frames of the
        stream, then the lookahead frames of the chunk after them.
      style: `[B, D]`.
      state: from `init_encoder_state`; `state["index"]` counts the frames encoded so far.
      available: `[B]` (or a scalar): how many frames of each stream exist, counted from its
        start; frames of `codes` at or beyond it are ignored. A step needs
        `available >= index + n * C + lookahead` unless the stream ends within its window, and a
        step with fewer than `n * C` real frames must be a stream's last.
    Returns:
      The encoder output of the n chunks' frames `[B, n * C, D]` and the new state. Running the
      steps in order, with any n, reproduces `encode` of the whole (masked) sequence.
    """
    c = self.config
    x = self._embed(codes, style)
    index = state["index"]
    positions = index + jnp.arange(codes.shape[-1] - c.lookahead)
    chunk_end = (positions // c.chunk_size + 1) * c.chunk_size  # [n * C]
    available = jnp.reshape(available, (-1, 1))
    layers = []
    for i, layer in enumerate(self.encoder_layers):
      lookahead = c.lookahead if i == 0 else 0
      key_limit = jnp.maximum(jnp.minimum(chunk_end + lookahead, available), 1)  # [B, n * C]
      x, layer_state = layer.stream(x, state["layers"][i], index, key_limit)
      layers.append(layer_state)
    return self.encoder_norm(x), {"index": index + positions.shape[0], "layers": layers}

  def decode(self, decoder_input: jax.Array, style: jax.Array, memory: jax.Array,
             memory_mask: jax.Array | None, deterministic: bool = True) -> jax.Array:
    """Teacher-forced decoder: input codes `[B, Q, T]` → logits `[B, Q, T, V]`."""
    x = self._embed(decoder_input, style)
    for layer in self.decoder_layers:
      x = layer(x, memory, memory_mask, deterministic)
    return self._heads(x)

  def __call__(self, input_codes: jax.Array, decoder_input: jax.Array, speaker: jax.Array,
               emotion: jax.Array, deterministic: bool = True, with_question_ctc: bool = False
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Teacher-forced logits `[B, Q, T, V]` (see `teacher_forcing` for the decoder input); with
    `with_question_ctc`, also the CTC head's logits over the encoder output `[B, S, C]`."""
    style = self.style(speaker, emotion, deterministic)
    memory, memory_mask = self.encode(input_codes, style, deterministic)
    logits = self.decode(decoder_input, style, memory, memory_mask, deterministic)
    if not with_question_ctc:
      return logits
    return logits, self.question_ctc_head(memory)

  def init_cache(self, style: jax.Array, memory: jax.Array, memory_mask: jax.Array,
                 length: int) -> dict[str, Any]:
    """The decoding cache for up to `length` steps.

    Holds the style `[B, D]`, the memory mask `[B, S]`, and per decoder layer the (empty)
    self-attention keys and values `[B, H, L, hd]` (`length` rounded up to whole
    `ATTENTION_BLOCK`s) and, in the fixed variant, the cross-attention keys and values
    `[B, H, S, hd]` of the encoder output `memory [B, S, D]`.
    """
    c = self.config
    shape = (style.shape[0], c.num_heads, round_up(length, ATTENTION_BLOCK), c.head_dim)
    layers = []
    for layer in self.decoder_layers:
      cache = {"self": {"k": jnp.zeros(shape), "v": jnp.zeros(shape)}}
      if not c.is_original:
        cache["memory"] = layer.memory(memory)
      layers.append(cache)
    return {"style": style, "memory_mask": memory_mask, "layers": layers}

  def decode_step(self, tokens: jax.Array, cache: dict[str, Any], index: jax.Array
                  ) -> tuple[jax.Array, dict[str, Any]]:
    """Decoder input frame `tokens [B, Q]` at position `index` → logits `[B, Q, V]`, cache."""
    x = self._embed(tokens[:, :, None], cache["style"])
    layers = []
    for layer, layer_cache in zip(self.decoder_layers, cache["layers"]):
      x, layer_cache = layer.step(x, layer_cache, index, cache["memory_mask"])
      layers.append(layer_cache)
    return self._heads(x)[:, :, 0], {**cache, "layers": layers}


def init_encoder_state(config: S2SConfig, batch: int, capacity: int) -> dict[str, Any]:
  """Empty streaming-encoder state for streams of up to `capacity` frames (see
  `encode_chunks`; with n chunks per step, round `capacity` up to a multiple of n chunks).

  Per layer: keys/values `[B, H, L, hd]`, with `L` the capacity rounded up to whole chunks, plus
  room for the last chunk's lookahead frames, rounded up to whole `ATTENTION_BLOCK`s; and the
  depthwise conv's history `[B, K - 1, E]`.
  """
  c = config
  length = round_up(round_up(capacity, c.chunk_size) + c.lookahead, ATTENTION_BLOCK)
  kv = (batch, c.num_heads, length, c.head_dim)
  history = (batch, c.conv_kernel_size - 1, c.conv_expansion * c.hidden_dim)
  layer = lambda: {"k": jnp.zeros(kv), "v": jnp.zeros(kv), "conv": jnp.zeros(history)}
  return {"index": jnp.zeros((), jnp.int32),
          "layers": [layer() for _ in range(c.num_encoder_layers)]}
