"""Autoregressive S2S generation over an explicit KV-cache pytree.

- `init_state` encodes the input (the fixed variant through the streaming encoder, blocks of
  chunks under `lax.scan`, so memory grows linearly with the input) and builds the decoding state.
- `IncrementalEncoder` runs the same streaming encoder on a question's codes while they arrive
  (a voice agent's turn), and `state_from_memory` builds the decoding state from its output.
- `_step` decodes one frame: the model's single-frame forward over the cache, sampling
  (temperature, top-k, top-p; temperature 0 is greedy), and the delay-pattern and end-of-speech
  bookkeeping.
- `generate` runs `_step` in a `lax.while_loop` until every sequence has ended or `max_frames`.
- `advance` runs `_step` up to a given step (jit-compiled once per shape; the state is donated
  and updated in place); `stream` (`stream_from_state` from a given state) is a Python
  generator over it that yields each frame as soon as all its levels exist (after `max_delay`
  more steps with a delay pattern).

State pytree (B batch, Q levels, L = max_frames + max_delay decoder steps):
  cache: from `S2STransformer.init_cache`: per decoder layer the self-attention keys/values
    `[B, H, L', hd]` (L rounded up to whole attention blocks) and, in the fixed variant, the
    encoder output's cross-attention keys/values.
  tokens: `[B, Q]` decoder input of the next step. index: `[]` steps done.
  lengths: `[B]` frames per sequence: `max_frames` until level 0 samples end-of-speech.
  buffer: `[B, Q, L]` the fed-back tokens, i.e. the delayed output. key: the sampling key.

The original variant has no end token and runs `max_frames`; its per-frame "cross-attention" sees
only the current frame (its cache holds the self-attention keys/values alone).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax.models.s2s import S2STransformer, init_encoder_state, round_up, undelay

Variables = dict[str, Any]
State = dict[str, Any]


class Sampling(NamedTuple):
  """Sampling settings as arrays, so that changing them does not recompile."""
  temperature: jax.Array  # [] float32; 0 means greedy (argmax)
  top_k: jax.Array  # [] int32; 0 means no top-k cut
  top_p: jax.Array  # [] float32; 1 means no nucleus cut

  @classmethod
  def make(cls, temperature: float = 0.8, top_k: int = 0, top_p: float = 0.95) -> Sampling:
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
      raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
    return cls(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))


def _largest_passing(predicate, num_bits: int, shape: tuple[int, ...]) -> jax.Array:
  """The largest int32 `t` in `[0, 2^num_bits)` with `predicate(t)` true, elementwise over
  `shape`, for a predicate that holds at 0 and is monotone (true up to some `t`, then false)."""

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    ok = predicate(mid)
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, hi = jnp.zeros(shape, jnp.int32), jnp.full(shape, 2 ** num_bits, jnp.int32)
  return jax.lax.fori_loop(0, num_bits, halve, (lo, hi))[0]


def sample_logits(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """Samples `[..., V]` logits → int32 `[...]`, or takes the argmax at temperature 0.

  The logits are divided by the temperature; the top-k cut keeps the k most probable classes,
  then the nucleus (top-p) cut keeps the most probable of those whose renormalised probability
  mass reaches p (the most probable class is always kept). Both cuts are thresholds found by
  bisection on the bit patterns of the probabilities (which order non-negative floats), exact up
  to ties and much cheaper than sorting on CPU. The class is then drawn by inverting the
  cumulative distribution of the kept probabilities at one uniform number per row (a third of
  the cost of `jax.random.categorical`'s one Gumbel number per class).
  """

  def draw(logits):
    probs = jax.nn.softmax(logits / sampling.temperature, axis=-1)
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)  # [..., V]; 1.0 is below 2^30
    rows = probs.shape[:-1]
    no_cut = lambda: jnp.zeros(rows, jnp.int32)
    k_cut = jax.lax.cond(sampling.top_k > 0, lambda: _largest_passing(
        lambda t: jnp.sum(bits >= t[..., None], -1) >= sampling.top_k, 30, rows), no_cut)
    kept = jnp.where(bits >= k_cut[..., None], probs, 0.0)
    mass = sampling.top_p * jnp.sum(kept, axis=-1)
    p_cut = jax.lax.cond(sampling.top_p < 1, lambda: _largest_passing(
        lambda t: jnp.sum(jnp.where(bits >= t[..., None], kept, 0.0), -1) >= mass, 30, rows),
        no_cut)
    kept = jnp.where(bits >= jnp.maximum(k_cut, p_cut)[..., None], probs, 0.0)
    cumulative = jnp.cumsum(kept, axis=-1)
    u = jax.random.uniform(key, rows) * cumulative[..., -1]  # in [0, kept mass)
    index = jnp.sum(cumulative <= u[..., None], axis=-1)  # the first class whose mass passes u
    # Rounding can put u at the total mass: the most probable class is always kept.
    return jnp.where(index < probs.shape[-1], index, jnp.argmax(probs, -1))

  logits = logits.astype(jnp.float32)
  return jax.lax.cond(sampling.temperature > 0, draw, lambda l: jnp.argmax(l, -1),
                      logits).astype(jnp.int32)


def encode_in_chunks(model: S2STransformer, variables: Variables, input_codes: jax.Array,
                     style: jax.Array, block_chunks: int = 10) -> tuple[jax.Array, jax.Array]:
  """Fixed variant: the encoder output `[B, S, D]` and frame mask `[B, S]` computed by the
  streaming encoder, `block_chunks` chunks per step under `lax.scan` (memory linear in S; each
  step reads the weights once for `block_chunks * chunk_size` frames). Input frames equal to the
  padding id end a sequence."""
  c = model.config
  b, q, s = input_codes.shape
  block = min(block_chunks, round_up(s, c.chunk_size) // c.chunk_size) * c.chunk_size
  num_blocks = round_up(s, block) // block
  lengths = jnp.sum(input_codes[:, 0] != c.pad_id, axis=-1)  # right padding
  padded = jnp.pad(input_codes, ((0, 0), (0, 0), (0, (num_blocks + 1) * block - s)),
                   constant_values=c.pad_id).reshape(b, q, num_blocks + 1, block)
  blocks = jnp.concatenate([padded[:, :, :-1], padded[:, :, 1:, :c.lookahead]], axis=-1)
  blocks = jnp.moveaxis(blocks, 2, 0)  # [N, B, Q, block + lookahead]: frames and lookahead

  def body(state, codes):
    out, state = model.apply(variables, codes, style, state, lengths, method="encode_chunks")
    return state, out

  _, outputs = jax.lax.scan(body, init_encoder_state(c, b, num_blocks * block), blocks)
  memory = jnp.moveaxis(outputs, 0, 1).reshape(b, num_blocks * block, -1)[:, :s]
  return memory, jnp.arange(s)[None, :] < lengths[:, None]


def _decoding_state(model: S2STransformer, variables: Variables, style: jax.Array,
                    memory: jax.Array, memory_mask: jax.Array, seed: jax.Array,
                    max_frames: int) -> State:
  c = model.config
  steps = max_frames + c.max_delay
  b = memory.shape[0]
  return {
      "cache": model.apply(variables, style, memory, memory_mask, steps, method="init_cache"),
      "tokens": jnp.full((b, c.num_quantizers), c.start_id, jnp.int32),
      "index": jnp.zeros((), jnp.int32),
      "lengths": jnp.full((b,), max_frames, jnp.int32),
      "buffer": jnp.full((b, c.num_quantizers, steps), c.pad_id, jnp.int32),
      "key": jax.random.key(seed),
  }


@functools.partial(jax.jit, static_argnames=("model", "max_frames"))
def init_state(model: S2STransformer, variables: Variables, input_codes: jax.Array,
               speaker: jax.Array, emotion: jax.Array, seed: jax.Array, max_frames: int) -> State:
  """Encodes `input_codes [B, Q, S]` and returns the decoding state for up to `max_frames`."""
  c = model.config
  style = model.apply(variables, speaker, emotion, method="style")
  if c.is_original:  # the original decoder never reads the encoder output
    memory = jnp.zeros((*input_codes.shape[::2], c.hidden_dim))
    memory_mask = jnp.ones(memory.shape[:2], bool)
  else:
    memory, memory_mask = encode_in_chunks(model, variables, input_codes, style)
  return _decoding_state(model, variables, style, memory, memory_mask, seed, max_frames)


@functools.partial(jax.jit, static_argnames=("model", "max_frames"))
def state_from_memory(model: S2STransformer, variables: Variables, style: jax.Array,
                      memory: jax.Array, memory_mask: jax.Array, seed: jax.Array,
                      max_frames: int) -> State:
  """The decoding state for an encoder output `memory [B, S, D]` (frame mask `[B, S]`) computed
  beforehand, e.g. by `IncrementalEncoder` while the question was spoken."""
  return _decoding_state(model, variables, style, memory, memory_mask, seed, max_frames)


@functools.partial(jax.jit, static_argnames="model")
def _style(model: S2STransformer, variables: Variables, speaker: jax.Array, emotion: jax.Array
           ) -> jax.Array:
  return model.apply(variables, speaker, emotion, method="style")


@functools.partial(jax.jit, static_argnames="model")
def _encode_chunk(model: S2STransformer, variables: Variables, codes: jax.Array,
                  style: jax.Array, state: dict[str, Any], available: jax.Array
                  ) -> tuple[jax.Array, dict[str, Any]]:
  return model.apply(variables, codes, style, state, available, method="encode_chunks")


class IncrementalEncoder:
  """Fixed variant, batch 1: the S2S encoder run on a question's codes while they arrive.

      encoder = IncrementalEncoder(model, variables, speaker, emotion, capacity=750)
      encoder.push(codes)                      # int32 [Q, k], as the codec streams them
      memory, mask = encoder.finish(frames)    # the question is its first `frames` frames

  Each whole chunk (`chunk_size` frames) runs as soon as its lookahead frames have arrived (one
  jitted `encode_chunks` step of one chunk: one program for every question). Frames pushed
  beyond the question's end are allowed (a turn's end is often decided after it): `finish`
  goes back to the last state whose chunks read no frame at or past `frames` (the last
  `keep_steps` states are kept; further back it re-encodes from the start) and runs the rest
  with the question's true length, so the memory equals `encode_in_chunks` of the first
  `frames` frames (up to float rounding), with masked zeros from frame `frames` to `width`.

  Args:
    model, variables: the S2S model (fixed variant).
    speaker, emotion: style ids.
    capacity: the longest question in frames.
    keep_steps: chunk steps that `finish` can undo without re-encoding.
  """

  def __init__(self, model: S2STransformer, variables: Variables, speaker: int, emotion: int,
               capacity: int, keep_steps: int = 4):
    c = model.config
    if c.is_original:
      raise ValueError("the original variant's decoder does not read the encoder: nothing to "
                       "encode incrementally")
    self.model, self.variables, self.config = model, variables, c
    self.capacity, self.keep_steps = round_up(max(1, capacity), c.chunk_size), keep_steps
    self.style = _style(model, variables, jnp.full((1,), speaker, jnp.int32),
                        jnp.full((1,), emotion, jnp.int32))
    self._initial = init_encoder_state(c, 1, self.capacity)
    self.reset()

  def reset(self) -> None:
    """Forgets the question: the next push starts a new one."""
    c = self.config
    self._codes = np.full((c.num_quantizers, self.capacity + c.chunk_size + c.lookahead),
                          c.pad_id, np.int32)
    self._received = 0
    self._outputs: list[jax.Array] = []  # one [1, chunk_size, D] per chunk encoded
    self._states = [self._initial]  # the state before chunk len(_outputs) - len(_states) + 1..

  @property
  def codes(self) -> np.ndarray:
    """The codes pushed so far, int32 `[Q, k]`."""
    return self._codes[:, :self._received].copy()

  @property
  def frames_encoded(self) -> int:
    return len(self._outputs) * self.config.chunk_size

  def _run_chunk(self, available: int) -> None:
    c = self.config
    start = self.frames_encoded
    codes = self._codes[None, :, start:start + c.chunk_size + c.lookahead]
    out, state = _encode_chunk(self.model, self.variables, jnp.asarray(codes), self.style,
                               self._states[-1], jnp.int32(available))
    self._outputs.append(out)
    self._states = (self._states + [state])[-(self.keep_steps + 1):]

  def push(self, codes: np.ndarray) -> None:
    """Appends int32 codes `[Q, k]` and encodes every chunk whose lookahead has arrived (codes
    past `capacity` frames are ignored)."""
    c = self.config
    k = max(0, min(codes.shape[1], self.capacity - self._received))
    self._codes[:, self._received:self._received + k] = codes[:, :k]
    self._received += k
    while (self.frames_encoded + c.chunk_size + c.lookahead <= self._received
           and self.frames_encoded < self.capacity):
      self._run_chunk(self._received)

  def finish(self, frames: int, width: int | None = None) -> tuple[jax.Array, jax.Array]:
    """The encoder output `[1, width, D]` and mask `[1, width]` of the question's first `frames`
    frames (at most the frames pushed); `width` defaults to `frames`. Then starts anew."""
    c = self.config
    frames = min(frames, self._received)
    if frames < 1:
      raise ValueError("the question has no code frames")
    # Chunks whose window (the chunk and its lookahead) reaches past the question's end read
    # frames that are not part of it: undo them.
    valid = min(max(0, (frames - c.lookahead) // c.chunk_size), len(self._outputs))
    undo = len(self._outputs) - valid
    if undo >= len(self._states):
      codes = self._codes.copy()
      self.reset()
      self._codes = codes
    else:
      self._outputs = self._outputs[:valid]
      self._states = self._states[:len(self._states) - undo]
    self._codes[:, frames:] = c.pad_id
    self._received = frames
    while self.frames_encoded < frames:
      self._run_chunk(frames)
    width = frames if width is None else width
    memory = jnp.concatenate(self._outputs, axis=1)[:, :width]
    memory = jnp.pad(memory, ((0, 0), (0, width - memory.shape[1]), (0, 0)))
    mask = jnp.arange(width)[None, :] < frames
    memory = jnp.where(mask[..., None], memory, 0.0)
    self.reset()
    return memory, mask


def _fed_back(c, t: jax.Array, sampled: jax.Array, lengths: jax.Array) -> jax.Array:
  """The decoder input `[B, Q]` after step `t`: each level's sampled code, or the start id before
  its first frame, end-of-speech at the sequence's length and padding after it."""
  frame = t - jnp.asarray(c.level_delays)[None, :]  # [1, Q] frame carried by each level
  length = lengths[:, None]
  return jnp.where(frame < 0, c.start_id,
                   jnp.where(frame == length, c.eos_id,
                             jnp.where(frame > length, c.pad_id, sampled)))


def _step(model: S2STransformer, variables: Variables, state: State, sampling: Sampling) -> State:
  c = model.config
  t = state["index"]
  logits, cache = model.apply(variables, state["tokens"], state["cache"], t,
                              method="decode_step")  # [B, Q, V]
  lengths = state["lengths"]
  if c.is_original:
    tokens = sample_logits(logits, jax.random.fold_in(state["key"], t), sampling)
  else:
    logits = logits.at[:, 1:, c.eos_id].set(-jnp.inf)  # only level 0 decides the end
    sampled = sample_logits(logits, jax.random.fold_in(state["key"], t), sampling)
    lengths = jnp.where((sampled[:, 0] == c.eos_id) & (t < lengths), t, lengths)
    tokens = _fed_back(c, t, sampled, lengths)
  buffer = jax.lax.dynamic_update_slice_in_dim(state["buffer"], tokens[:, :, None], t, axis=2)
  return {**state, "cache": cache, "tokens": tokens, "index": t + 1, "lengths": lengths,
          "buffer": buffer}


def _finished(model: S2STransformer, state: State) -> jax.Array:
  return jnp.all(state["index"] >= state["lengths"] + model.config.max_delay)


@functools.partial(jax.jit, static_argnames=("model", "max_frames"))
def generate(model: S2STransformer, variables: Variables, input_codes: jax.Array,
             speaker: jax.Array, emotion: jax.Array, sampling: Sampling, seed: jax.Array,
             max_frames: int) -> tuple[jax.Array, jax.Array]:
  """Generates up to `max_frames` frames in one compiled `lax.while_loop`.

  Returns:
    codes `[B, Q, max_frames]` int32 (frames at or after a sequence's length hold the padding
    id in the fixed variant) and lengths `[B]` int32.
  """
  c = model.config
  state = init_state(model, variables, input_codes, speaker, emotion, seed, max_frames)
  state = jax.lax.while_loop(lambda s: ~_finished(model, s),
                             lambda s: _step(model, variables, s, sampling), state)
  codes = undelay(state["buffer"], c.level_delays)
  if not c.is_original:
    codes = jnp.where(jnp.arange(max_frames) < state["lengths"][:, None, None], codes, c.pad_id)
  return codes, state["lengths"]


def _beam_step(model: S2STransformer, variables: Variables, state: State, beam_size: int
               ) -> State:
  """One decoding step of `beam_search` over `B * beam_size` rows (beam-major within a batch
  element): every beam's level-0 code is branched, levels 1.. take their most likely code."""
  c = model.config
  t = state["index"]
  logits, cache = model.apply(variables, state["tokens"], state["cache"], t,
                              method="decode_step")  # [BK, Q, V]
  logits = logits.astype(jnp.float32).at[:, 1:, c.eos_id].set(-jnp.inf)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  lengths = state["lengths"]
  frame = t - jnp.asarray(c.level_delays)[None, :]  # [1, Q] frame carried by each level
  # Levels 1..: the most likely code; its log-probability counts where it is a frame of speech.
  speech = (frame >= 0) & (frame < lengths[:, None])  # [BK, Q]
  rest = jnp.sum(jnp.where(speech[:, 1:], jnp.max(log_probs[:, 1:], axis=-1), 0.0), axis=-1)
  # Level 0 branches while the beam has not ended; an ended beam has one continuation, free.
  vocab = log_probs.shape[-1]
  ended_row = jnp.where(jnp.arange(vocab) == 0, 0.0, -jnp.inf)
  level0 = jnp.where(speech[:, :1], log_probs[:, 0], ended_row[None, :])  # [BK, V]
  candidates = (state["scores"] + rest)[:, None] + level0
  batch = candidates.shape[0] // beam_size
  scores, best = jax.lax.top_k(candidates.reshape(batch, beam_size * vocab), beam_size)
  parent = (best // vocab + beam_size * jnp.arange(batch)[:, None]).reshape(-1)
  code0 = (best % vocab).reshape(-1)
  cache = jax.tree.map(lambda x: x[parent], cache)
  sampled = jnp.argmax(log_probs, axis=-1)[parent].at[:, 0].set(code0)
  lengths = lengths[parent]
  lengths = jnp.where((code0 == c.eos_id) & (t < lengths), t, lengths)
  tokens = _fed_back(c, t, sampled, lengths)
  buffer = jax.lax.dynamic_update_slice_in_dim(state["buffer"][parent], tokens[:, :, None], t,
                                               axis=2)
  return {**state, "cache": cache, "tokens": tokens, "index": t + 1, "lengths": lengths,
          "buffer": buffer, "scores": scores.reshape(-1)}


@functools.partial(jax.jit, static_argnames=("model", "max_frames", "beam_size"))
def beam_search(model: S2STransformer, variables: Variables, input_codes: jax.Array,
                speaker: jax.Array, emotion: jax.Array, max_frames: int, beam_size: int,
                length_penalty: jax.Array | float = 1.0
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The most likely answers by beam search (fixed variant), in one compiled `lax.while_loop`.

  Each step extends every beam by each level-0 code (end-of-speech included) and keeps the
  `beam_size` best extensions by total log-probability; levels 1.. are predicted in parallel
  with level 0 from the same state, so each takes its most likely code (an exact maximum given
  the beam's level-0 codes). A beam that ended stays as it is. When every beam has ended (or
  reached `max_frames`), the answer of each input is its beam with the best total
  log-probability divided by `(frames + 1) ** length_penalty` (0: the raw total, which favours
  short answers; 1: the mean per frame).

  Returns:
    codes `[B, Q, max_frames]` int32 (the padding id from a sequence's length on), lengths `[B]`
    int32 and the chosen beams' scores `[B]` float32.
  """
  c = model.config
  if c.is_original:
    raise ValueError("beam search needs the fixed variant (the original has no end-of-speech)")
  if beam_size < 1:
    raise ValueError(f"beam_size must be at least 1, got {beam_size}")
  batch = input_codes.shape[0]
  style = model.apply(variables, speaker, emotion, method="style")
  memory, memory_mask = encode_in_chunks(model, variables, input_codes, style)
  repeat = lambda x: jnp.repeat(x, beam_size, axis=0)
  state = _decoding_state(model, variables, repeat(style), repeat(memory), repeat(memory_mask),
                          jnp.int32(0), max_frames)
  first = jnp.arange(batch * beam_size) % beam_size == 0  # identical beams: keep one at first
  state["scores"] = jnp.where(first, 0.0, -jnp.inf)
  state = jax.lax.while_loop(lambda s: ~_finished(model, s),
                             lambda s: _beam_step(model, variables, s, beam_size), state)
  lengths = state["lengths"]
  normalized = state["scores"] / (lengths + 1.0) ** length_penalty
  chosen = (jnp.argmax(normalized.reshape(batch, beam_size), axis=-1)
            + beam_size * jnp.arange(batch))
  codes = undelay(state["buffer"][chosen], c.level_delays)
  lengths = lengths[chosen]
  codes = jnp.where(jnp.arange(max_frames) < lengths[:, None, None], codes, c.pad_id)
  return codes, lengths, normalized[chosen]


@functools.partial(jax.jit, static_argnames="model", donate_argnames="state")
def advance(model: S2STransformer, variables: Variables, state: State, sampling: Sampling,
            stop: jax.Array) -> State:
  """Decodes steps until `state["index"] == stop` or every sequence has ended (jitted once per
  shape, whatever `stop`; `state` is donated and updated in place)."""
  return jax.lax.while_loop(lambda s: (s["index"] < stop) & ~_finished(model, s),
                            lambda s: _step(model, variables, s, sampling), state)


@functools.partial(jax.jit, static_argnames=("model", "count"))
def _frames(model: S2STransformer, state: State, first: jax.Array, count: int
            ) -> tuple[jax.Array, jax.Array]:
  """Frames `first .. first + count - 1` `[B, Q, count]` of the delayed buffer (padding id from
  a sequence's length on; positions past the buffer clipped), and the lengths `[B]`."""
  c = model.config
  frame = first + jnp.arange(count)
  codes = jnp.stack([jnp.take(state["buffer"][:, q], frame + d, axis=1, mode="clip")
                     for q, d in enumerate(c.level_delays)], axis=1)
  return jnp.where(frame < state["lengths"][:, None, None], codes, c.pad_id), state["lengths"]


def stream(model: S2STransformer, variables: Variables, input_codes: jax.Array,
           speaker: jax.Array, emotion: jax.Array, sampling: Sampling, seed: jax.Array,
           max_frames: int, frames_per_call: int = 4) -> Iterator[np.ndarray]:
  """Yields frames `[B, Q]` (numpy int32) as they are produced, with the same sampling as
  `generate` (same seed, same codes); stops when every sequence has ended. A sequence that ended
  earlier than others yields padding-id frames.

  Each call decodes `frames_per_call` steps (4 steps = 20 ms of 200 Hz audio): fewer calls
  cost less Python and dispatch time per frame; more steps per call delay the first frames.
  """
  if frames_per_call < 1:
    raise ValueError(f"frames_per_call must be at least 1, got {frames_per_call}")
  state = init_state(model, variables, input_codes, speaker, emotion, seed, max_frames)
  yield from stream_from_state(model, variables, state, sampling, max_frames, frames_per_call)


def stream_from_state(model: S2STransformer, variables: Variables, state: State,
                      sampling: Sampling, max_frames: int, frames_per_call: int = 4
                      ) -> Iterator[np.ndarray]:
  """`stream` from a decoding state (`init_state` or `state_from_memory`), which it donates."""
  if frames_per_call < 1:
    raise ValueError(f"frames_per_call must be at least 1, got {frames_per_call}")
  c = model.config
  total_steps = max_frames + c.max_delay
  done = decided = 0  # steps decoded; frames whose every level those steps decide
  while done < total_steps:
    done = min(done + frames_per_call, total_steps)
    state = advance(model, variables, state, sampling, jnp.int32(done))
    first, decided = decided, max(done - c.max_delay, 0)
    frames, lengths = _frames(model, state, jnp.int32(first), frames_per_call)
    frames, end = np.asarray(frames), int(np.max(lengths))
    for frame in range(first, min(decided, end)):
      yield frames[:, :, frame - first]
    if end <= decided:
      return
