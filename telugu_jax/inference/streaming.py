"""Streaming codec: audio in chunks → codes, codes in chunks → audio, for one live session.

    codec = inference.load_codec(DIR)
    enc = codec.stream_encoder()          # causal codecs only
    codes = enc.push(samples)             # float32 [n] (any n >= 0) -> int32 [n_q, k] (k may be 0)
    codes = enc.flush()                   # the rest, zero-padded to a frame; ends the utterance
    dec = codec.stream_decoder()          # causal codec: exact; faithful codec: windowed
    samples = dec.push(codes)             # int32 [n_q, k] (k >= 0) -> float32 [m] ready so far
    samples = dec.flush()                 # everything still held back; ends the utterance
    dec.reset(); enc.reset()              # start a new utterance
    dec.latency_samples                   # samples of lookahead held back (causal: 0)
    enc.latency_samples                   # samples a frame may wait for its last one (hop - 1)
    enc.warmup(); dec.warmup()            # compile every step size (a server's startup)

A causal codec (`Codec(causal=True)`, `configs/codec.py:streaming`) streams exactly: partial
frames wait in a numpy buffer, whole frames run through a jitted step over an explicit state
pytree (each causal convolution's input history, the "stream" collection of `Codec`), in chunks
of 1, 2, 4, ... `max_step_frames` (16) frames so that at most log2(max_step_frames) + 1 programs
compile, once per loaded codec for all its stream objects. The streamed codes equal `encode` of
the same samples, and the streamed audio equals `decode` of the same codes, whatever the
chunking. Batch 1: one object per session and direction.

The faithful codec (converted original weights) is not causal: its decoder pads symmetrically
(the last samples of a frame depend on the next `lookahead` frames) and normalises over the whole
utterance. `WindowedDecoder` serves it approximately: each push decodes a window of
`left_context` already-emitted frames plus everything received, emits the samples whose frames
have their full right lookahead, and holds back the rest. Its error against the full `decode` is
measured in the README ("Streaming codec").
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import numpy as np

from telugu_jax.data.audio import bucket_length
from telugu_jax.models import codec as codec_lib
from telugu_jax.models.codec import Codec

MAX_STEP_FRAMES = 16
DEFAULT_LEFT_CONTEXT = 64

# Per loaded codec: its jitted step and initial state per method, shared by every stream object
# of that codec (one compilation per chunk size, not one per session).
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_samples(samples: Any, where: str) -> np.ndarray:
  """float `[n]` → float32 `[n]`, or a one-line ValueError naming `where` and the problem."""
  array = np.asarray(samples)
  if array.ndim != 1:
    raise ValueError(f"{where}: expected float32 samples of shape [n], got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"{where}: expected float samples in [-1, 1], got dtype {array.dtype} (int16 "
                     f"PCM: convert with telugu_jax.data.audio.pcm16_to_float)")
  array = array.astype(np.float32, copy=False)
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{where}: samples contain NaN or infinity")
  return array


def _check_codes(codes: Any, num_quantizers: int, codebook_size: int, where: str) -> np.ndarray:
  """int `[n_q, k]` → int32 `[n_q, k]`, or a one-line ValueError naming `where` and the error."""
  array = np.asarray(codes)
  if array.ndim != 2 or array.shape[0] != num_quantizers:
    raise ValueError(f"{where}: expected int codes of shape [{num_quantizers}, k], "
                     f"got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{where}: expected integer codes, got dtype {array.dtype}")
  if array.size and (array.min() < 0 or array.max() >= codebook_size):
    raise ValueError(f"{where}: codes must lie in [0, {codebook_size}), "
                     f"got [{array.min()}, {array.max()}]")
  return array.astype(np.int32, copy=False)


def _step_sizes(frames: int, largest: int) -> list[int]:
  """`frames` as a sum of powers of two, each at most `largest` (largest first)."""
  sizes = []
  while frames > 0:
    size = min(largest, 1 << (frames.bit_length() - 1))
    sizes.append(size)
    frames -= size
  return sizes


def _check_power_of_two(value: int, name: str) -> int:
  if value < 1 or value & (value - 1):
    raise ValueError(f"{name} must be a power of two >= 1, got {value}")
  return value


class _CausalStream:
  """What the causal encoder and decoder share: the model, the state and the step loop."""

  def __init__(self, codec, method, example, max_step_frames: int):
    if not codec.model.causal:
      raise ValueError(f"{type(self).__name__} needs a causal codec (Codec(causal=True), "
                       f"configs/codec.py:streaming); this codec is the faithful, non-causal one: "
                       f"use codec.stream_decoder() (windowed) or codec.encode on whole turns")
    self.codec = codec
    self.hop = codec_lib.frame_hop(codec.model.strides)
    self.max_step_frames = _check_power_of_two(max_step_frames, "max_step_frames")
    steps = _STEPS.setdefault(codec, {})
    if method.__name__ not in steps:
      model = codec.model

      def step(variables, state, inputs):
        out, updates = model.apply({**variables, "stream": state}, inputs, method=method,
                                   mutable=["stream"])
        return out, updates["stream"]

      shapes = jax.eval_shape(step, codec.inference_variables, {}, example)[1]
      # Zeros on the host: a new utterance's first step takes them in; later steps keep the
      # state on the device.
      steps[method.__name__] = (jax.jit(step),
                                jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    self._step, self._initial = steps[method.__name__]
    self._state = self._initial

  def _run(self, inputs: np.ndarray, frames: int, frame_axis_size: int) -> list[np.ndarray]:
    """Runs whole frames through the step in power-of-two chunks; returns each step's output."""
    outputs, start = [], 0
    for size in _step_sizes(frames, self.max_step_frames):
      chunk = inputs[..., start * frame_axis_size:(start + size) * frame_axis_size]
      out, self._state = self._step(self.codec.inference_variables, self._state, chunk[None])
      outputs.append(out)
      start += size
    # Indexing on the host: a device array's slices would compile a program per shape.
    return [np.asarray(out)[0] for out in outputs]

  def reset(self) -> None:
    """Forgets the utterance: the next push starts a new one."""
    self._state = self._initial

  def warmup(self) -> None:
    """Compiles the step for every chunk size (1, 2, 4, ... `max_step_frames` frames), then
    resets; a server calls it once at startup, before its first session."""
    self.reset()
    size = 1
    while size <= self.max_step_frames:
      self.push(self._example(size))
      size *= 2
    self.reset()


class StreamEncoder(_CausalStream):
  """Causal codec: samples in any chunks → the codes of every completed frame.

  Frame `j` covers samples `[j * hop, (j + 1) * hop)` (and their history), so a frame's codes
  come out as soon as its last sample arrives: `latency_samples = hop - 1` at most.
  """

  def __init__(self, codec, max_step_frames: int = MAX_STEP_FRAMES):
    hop = codec_lib.frame_hop(codec.model.strides)
    super().__init__(codec, Codec.stream_encode, jax.ShapeDtypeStruct((1, hop), np.float32),
                     max_step_frames)
    self.latency_samples = self.hop - 1
    self._buffer = np.zeros(0, np.float32)

  def push(self, samples: np.ndarray) -> np.ndarray:
    """float32 `[n]` at 16 kHz (any n >= 0) → int32 codes `[n_q, k]` of the frames completed."""
    samples = _check_samples(samples, "StreamEncoder.push")
    buffer = np.concatenate([self._buffer, samples])
    frames = buffer.size // self.hop
    self._buffer = buffer[frames * self.hop:]
    outputs = self._run(buffer[:frames * self.hop], frames, self.hop)
    if not outputs:
      return np.zeros((self.codec.num_quantizers, 0), np.int32)
    return np.concatenate(outputs, axis=1)

  def _example(self, frames: int) -> np.ndarray:
    return np.zeros(frames * self.hop, np.float32)

  def flush(self) -> np.ndarray:
    """The codes of the buffered samples, zero-padded to a whole frame; then starts anew.

    Pushing every sample then flushing gives `encode` of the audio zero-padded to whole frames.
    """
    rest = self._buffer
    codes = (self.push(np.zeros(self.hop - rest.size, np.float32)) if rest.size
             else np.zeros((self.codec.num_quantizers, 0), np.int32))
    self.reset()
    return codes

  def reset(self) -> None:
    super().reset()
    self._buffer = np.zeros(0, np.float32)


class StreamDecoder(_CausalStream):
  """Causal codec: codes in any chunks → exactly `hop` samples per frame, nothing held back."""

  latency_samples = 0

  def __init__(self, codec, max_step_frames: int = MAX_STEP_FRAMES):
    example = jax.ShapeDtypeStruct((1, codec.num_quantizers, 1), np.int32)
    super().__init__(codec, Codec.stream_decode, example, max_step_frames)

  def push(self, codes: np.ndarray) -> np.ndarray:
    """int32 codes `[n_q, k]` (k >= 0) → float32 samples `[k * hop]`."""
    codes = _check_codes(codes, self.codec.num_quantizers, self.codec.codebook_size,
                         "StreamDecoder.push")
    outputs = self._run(codes, codes.shape[1], 1)
    return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)

  def _example(self, frames: int) -> np.ndarray:
    return np.zeros((self.codec.num_quantizers, frames), np.int32)

  def flush(self) -> np.ndarray:
    """Nothing is held back by a causal decoder: returns no samples and starts anew."""
    self.reset()
    return np.zeros(0, np.float32)


class WindowedDecoder:
  """Faithful (non-causal) codec: approximate streaming decode over a sliding window of frames.

  Each push decodes, in one call of the codec's (masked, length-bucketed) decoder, the frames
  from `left_context` frames before the first sample not yet emitted up to the last received,
  and emits the samples of every frame that has `lookahead` frames after it. The samples differ
  from the full `decode` of the utterance because the window starts later (unless it reaches the
  utterance's start) and because the decoder's GroupNorm statistics are the window's, not the
  utterance's; `flush` decodes the held-back end. With a `left_context` as long as the
  utterance, one push of all its codes then `flush` equals `decode`.

  Args:
    codec: a loaded faithful codec (`CodecModel`).
    left_context: frames already emitted that each window starts with (more: closer to the
      full decode, and more to compute per push).
    lookahead: frames held back; by default the decoder's right context
      (`codec_lib.decoder_lookahead_frames`, 4 frames = 20 ms for the original strides).
    min_window: the smallest window compiled; windows are padded (and masked) to
      `min_window * (1, 1.5, 2, 3, 4, 6, ...)` frames, one program each.

  Attributes:
    latency_samples: `lookahead * hop`, samples held back until later frames arrive.
  """

  def __init__(self, codec, left_context: int = DEFAULT_LEFT_CONTEXT,
               lookahead: int | None = None, min_window: int = 16):
    if left_context < 0:
      raise ValueError(f"left_context must be >= 0 frames, got {left_context}")
    self.codec = codec
    strides = tuple(codec.model.strides)
    self.hop = codec_lib.frame_hop(strides)
    self.left_context = left_context
    self.lookahead = (codec_lib.decoder_lookahead_frames(strides) if lookahead is None
                      else lookahead)
    if self.lookahead < 0:
      raise ValueError(f"lookahead must be >= 0 frames, got {self.lookahead}")
    self.latency_samples = self.lookahead * self.hop
    if min_window < 1:
      raise ValueError(f"min_window must be >= 1 frame, got {min_window}")
    self._min_window = min_window
    self.reset()

  def reset(self) -> None:
    """Forgets the utterance: the next push starts a new one."""
    self._frames = np.zeros((self.codec.num_quantizers, 0), np.int32)  # frames from _start on
    self._start = 0  # absolute index of self._frames[:, 0]
    self._emitted = 0  # samples emitted, in the full decode's sample index

  def warmup(self, push_frames: int = 4) -> None:
    """Compiles the window sizes of an utterance pushed `push_frames` frames at a time (and its
    flush), then resets; a server calls it once at startup, before its first session."""
    self.reset()
    codes = np.zeros((self.codec.num_quantizers, push_frames), np.int32)
    for _ in range((self.left_context + self.lookahead) // push_frames + 2):
      self.push(codes)
    self.flush()

  def push(self, codes: np.ndarray) -> np.ndarray:
    """int32 codes `[n_q, k]` (k >= 0) → float32 samples ready so far."""
    codes = _check_codes(codes, self.codec.num_quantizers, self.codec.codebook_size,
                         "WindowedDecoder.push")
    self._frames = np.concatenate([self._frames, codes], axis=1)
    ready = (self._start + self._frames.shape[1] - self.lookahead) * self.hop
    return self._emit(ready)

  def flush(self) -> np.ndarray:
    """Everything still held back (the utterance's last frames and tail); then starts anew."""
    received = self._start + self._frames.shape[1]
    samples = self._emit(self.codec.num_samples(received)) if received else np.zeros(
        0, np.float32)
    self.reset()
    return samples

  def _emit(self, end: int) -> np.ndarray:
    """Decodes the window and returns full-decode samples `[_emitted, end)`."""
    if end <= self._emitted:
      return np.zeros(0, np.float32)
    first = max(0, self._emitted // self.hop - self.left_context)  # window start, absolute frame
    window = self._frames[:, first - self._start:]
    frames = window.shape[1]
    width = bucket_length(frames, self._min_window)  # min_window * (1, 1.5, 2, 3, 4, ...)
    padded = np.pad(window, ((0, 0), (0, width - frames)))[None]
    audio = self.codec._decode(self.codec.inference_variables, padded, np.array([frames], np.int32))
    # Window sample i is the full decode's sample first * hop + i.
    offset = first * self.hop
    samples = np.asarray(audio)[0, self._emitted - offset:end - offset]
    self._emitted = end
    keep = max(0, self._emitted // self.hop - self.left_context)
    self._frames = self._frames[:, keep - self._start:]
    self._start = keep
    return samples
