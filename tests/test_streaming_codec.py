"""The causal codec and the streaming encoder/decoder, on real Telugu speech.

A randomly initialised `configs/codec.py:streaming_smoke` codec: streamed codes must equal the
full-pass `encode` and streamed audio the full-pass `decode` for any chunking; the model must be
causal; the faithful codec's windowed decoder is measured against its full `decode`.
"""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import codec as codec_configs
from telugu_jax import checkpoints
from telugu_jax.data import audio
from telugu_jax.inference import codec as inference_codec
from telugu_jax.inference import streaming
from telugu_jax.models import codec as codec_lib
from telugu_jax.models.codec import Codec
from telugu_jax.train import codec as codec_trainer

COMMON_VOICE_DEV = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "common-voice-te-dev")
HOP = 80
# Each program compiles in seconds on a loaded 2-core machine: the tests keep their number down.
MAX_STEP = 2  # step programs of 1 and 2 frames (default: up to 64); longer chunks still split
WINDOW = 1024  # one window program for the faithful windowed decoder (default: powers of two)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
  return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2)))


def chunked(total: int, rng: np.random.Generator, first: tuple[int, ...]) -> list[int]:
  """Chunk sizes covering `total`: `first`, then random sizes between 1 and 2 * the mean."""
  sizes, used = [], 0
  for size in first:
    sizes.append(min(size, total - used))
    used += sizes[-1]
  while used < total:
    sizes.append(min(int(rng.integers(0, 700)), total - used))
    used += sizes[-1]
  return sizes


@pytest.fixture(scope="module")
def speech():
  """Two real clips (3 s at most each), level-normalised as the trainer does."""
  paths = sorted(glob.glob(os.path.join(COMMON_VOICE_DEV, "*.mp3")))[:2]
  if not paths:
    pytest.skip(f"no real speech clips in {os.path.normpath(COMMON_VOICE_DEV)}")
  return [audio.normalize_rms(audio.load_audio(p)[:48000]) for p in paths]


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
  """`(causal, faithful)` smoke codecs with the same random parameters; the causal one is
  saved with the trainer's metadata and loaded back by `load_codec`."""
  config = codec_configs.get_config("streaming_smoke")
  kwargs = config.codec.to_dict()
  assert kwargs["causal"] is True
  # An "rbg" key: its random bits compile in a third of threefry's time.
  variables = codec_trainer.run_once(Codec(**kwargs).init, jax.random.key(0, impl="rbg"),
                                     jnp.zeros((1, 4 * HOP)))
  path = str(tmp_path_factory.mktemp("ckpt") / "ckpt")
  checkpoints.save(path, 0, {"gen": dict(variables)},
                   checkpoints.model_meta("codec", codec=kwargs))
  causal = inference_codec.load_codec(path, bucket_seconds=3.0)
  faithful = inference_codec.CodecModel({**kwargs, "causal": False}, variables, 3.0)
  return causal, faithful


def test_causal_codec_has_the_faithful_parameters_and_lengths(codecs):
  causal, faithful = codecs
  shapes = lambda c: jax.tree.map(jnp.shape, jax.eval_shape(  # noqa: E731
      lambda: c.model.init(jax.random.key(0), jnp.zeros((1, 800)))))
  assert shapes(causal) == shapes(faithful)
  # Causal: whole frames of 80 samples (5 ms at 16 kHz); faithful: the original's arithmetic.
  assert [causal.num_frames(n) for n in (0, 79, 80, 16000, 16079)] == [0, 0, 1, 200, 200]
  assert causal.num_samples(239) == 239 * 80
  assert (faithful.num_frames(16000), faithful.num_samples(239)) == (199, 19136)
  wave = np.zeros((1, 16079), np.float32)
  assert causal.encode(wave).shape == (1, 8, 200)
  assert causal.decode(np.zeros((1, 8, 7), np.int32)).shape == (1, 7 * 80)
  assert causal.stream_decoder().latency_samples == 0
  assert causal.stream_encoder().latency_samples == 79
  # The faithful decoder's samples of frame f read frames up to f + 4 (its symmetric padding).
  assert faithful.stream_decoder().latency_samples == 4 * 80


def test_the_causal_codec_is_causal_and_the_faithful_one_is_not(codecs, speech):
  causal, faithful = codecs
  wave = speech[0][:16000]
  changed = wave.copy()
  changed[8000:] = np.random.default_rng(0).uniform(-0.5, 0.5, 8000)
  codes, codes_changed = causal.encode(wave)[0], causal.encode(changed)[0]
  np.testing.assert_array_equal(codes[:, :100], codes_changed[:, :100])  # frames < 8000 / 80
  assert np.any(codes[:, 100:] != codes_changed[:, 100:])
  later = codes.copy()
  later[:, 150:] = (later[:, 150:] + 1) % causal.codebook_size
  out, out_later = causal.decode(codes[None])[0], causal.decode(later[None])[0]
  np.testing.assert_array_equal(out[:150 * HOP], out_later[:150 * HOP])
  assert np.max(np.abs(out[150 * HOP:] - out_later[150 * HOP:])) > 1e-3
  # The same probe catches the faithful codec (symmetric padding, utterance-wide GroupNorm).
  out, out_later = faithful.decode(codes[None])[0], faithful.decode(later[None])[0]
  assert np.max(np.abs(out[:150 * HOP] - out_later[:150 * HOP])) > 1e-4


def test_streamed_codes_and_audio_equal_the_full_pass(codecs, speech):
  causal, _ = codecs
  rng = np.random.default_rng(0)
  enc = causal.stream_encoder(max_step_frames=MAX_STEP)
  dec = causal.stream_decoder(max_step_frames=MAX_STEP)
  for i, wave in enumerate(speech):
    # 1 sample, odd sizes, a frame and a bit, more than a second, nothing, then random sizes.
    sizes = chunked(wave.size, rng, (1, 7, 81, 333, 0, 17011) if i == 0 else (16500, 3, 0, 1))
    pieces, start = [], 0
    for size in sizes:
      piece = enc.push(wave[start:start + size])
      start += size
      assert piece.dtype == np.int32 and piece.shape == (8, start // HOP - sum(
          p.shape[1] for p in pieces))
      pieces.append(piece)
    pieces.append(enc.flush())  # the last partial frame, zero-padded
    streamed = np.concatenate(pieces, axis=1)
    padded = np.pad(wave, (0, -wave.size % HOP))
    expected = causal.encode(padded)[0]
    np.testing.assert_array_equal(streamed, expected)

    full = causal.decode(expected[None])[0]
    frames = chunked(expected.shape[1], rng, (1, 0, 3, 250, 17) if i == 0 else (2, 5))
    out, start = [], 0
    for size in frames:
      samples = dec.push(expected[:, start:start + size])
      assert samples.dtype == np.float32 and samples.shape == (size * HOP,)
      out.append(samples)
      start += size
    assert dec.flush().size == 0  # a causal decoder holds nothing back
    np.testing.assert_allclose(np.concatenate(out), full, rtol=0, atol=1e-5)


def test_reset_and_flush_start_a_new_utterance(codecs, speech):
  causal, faithful = codecs
  a, b = speech[0][:4000], speech[1][:4000]
  enc = causal.stream_encoder(max_step_frames=MAX_STEP)
  fresh = enc.push(b)
  enc.push(a[:1234])
  enc.reset()
  np.testing.assert_array_equal(enc.push(b), fresh)
  enc.push(a[:1234])
  enc.flush()
  np.testing.assert_array_equal(enc.push(b), fresh)
  enc.push(a[:1234])
  enc.warmup()  # runs every step size, then resets
  np.testing.assert_array_equal(enc.push(b), fresh)
  # Every stream object of a codec shares its compiled steps (one compilation, many sessions).
  assert causal.stream_encoder()._step is enc._step

  codes_a, codes_b = causal.encode(a)[0], causal.encode(b)[0]
  for codec in (causal, faithful):
    dec = codec.stream_decoder(**({"max_step_frames": MAX_STEP} if codec is causal
                                  else {"min_window": WINDOW}))
    expected = np.concatenate([dec.push(codes_b), dec.flush()])
    dec.push(codes_a[:, :13])
    dec.reset()
    np.testing.assert_array_equal(np.concatenate([dec.push(codes_b), dec.flush()]), expected)


def test_windowed_decoder_of_the_faithful_codec(codecs, speech):
  causal, faithful = codecs
  # Codes of real speech (from the causal encoder: the same parameters, one program less).
  codes = causal.encode(speech[0])[0][:, :300]  # [8, 300]: 1.5 s
  full = faithful.decode(codes[None])[0]
  # Everything in one push, then flush with a context of the whole utterance: the full pass.
  dec = faithful.stream_decoder(left_context=codes.shape[1], min_window=WINDOW)
  whole = np.concatenate([dec.push(codes), dec.flush()])
  np.testing.assert_allclose(whole, full, rtol=0, atol=1e-5)
  # 20 ms pushes (4 frames): the error shrinks as the left context grows.
  snrs = []
  for context in (0, 4, 16, 64):
    dec = faithful.stream_decoder(left_context=context, min_window=WINDOW)
    out = [dec.push(codes[:, i:i + 4]) for i in range(0, codes.shape[1], 4)]
    streamed = np.concatenate(out + [dec.flush()])
    assert streamed.shape == full.shape
    snrs.append(snr_db(full, streamed))
  # Measured: 11.1, 35.9, 42.4, 47.0 dB (this random smoke codec; the README has full size).
  assert snrs == sorted(snrs), snrs
  assert snrs[0] < 20 and snrs[-1] > 40, snrs


def test_bad_input_gives_one_line_errors(codecs):
  causal, faithful = codecs
  enc = causal.stream_encoder(max_step_frames=MAX_STEP)
  with pytest.raises(ValueError, match=r"StreamEncoder.push: expected float32 samples of shape "
                     r"\[n\], got shape \(1, 100\)"):
    enc.push(np.zeros((1, 100), np.float32))
  with pytest.raises(ValueError, match="got dtype int16.*pcm16_to_float"):
    enc.push(np.zeros(100, np.int16))
  with pytest.raises(ValueError, match="NaN or infinity"):
    enc.push(np.full(100, np.nan, np.float32))
  for dec in (causal.stream_decoder(max_step_frames=MAX_STEP), faithful.stream_decoder()):
    name = type(dec).__name__
    with pytest.raises(ValueError, match=rf"{name}.push: expected int codes of shape \[8, k\], "
                       r"got shape \(4, 3\)"):
      dec.push(np.zeros((4, 3), np.int32))
    with pytest.raises(ValueError, match="expected integer codes, got dtype float32"):
      dec.push(np.zeros((8, 3), np.float32))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\), got \[32, 32\]"):
      dec.push(np.full((8, 3), 32, np.int32))
  with pytest.raises(ValueError, match="StreamEncoder needs a causal codec"):
    faithful.stream_encoder()
  with pytest.raises(ValueError, match="max_step_frames must be a power of two"):
    causal.stream_decoder(max_step_frames=6)
  with pytest.raises(ValueError, match="Codec.stream_encode needs a causal codec"):
    faithful.model.apply(faithful.variables, jnp.zeros((1, HOP)), method=Codec.stream_encode,
                         mutable=["stream"])


def test_streaming_configs():
  base, streaming_config = codec_configs.get_config(), codec_configs.get_config("streaming")
  assert streaming_config.codec.to_dict() == {**base.codec.to_dict(), "causal": True}
  smoke = codec_configs.get_config("streaming_smoke")
  assert smoke.codec.to_dict() == {**codec_configs.get_config("smoke").codec.to_dict(),
                                   "causal": True}
  assert codec_lib.decoder_lookahead_frames() == 4


def test_resize_upsampling_streams_and_keeps_silence_steady():
  """`upsample="resize"` (not in the original): the causal decoder streams exactly, and the
  faithful decoder turns steady latents into a steady output, where the original's transposed
  convs make a tone at the frame rate."""
  config = codec_configs.get_config("streaming_smoke")
  kwargs = {**config.codec.to_dict(), "strides": (2, 2, 2, 2, 4), "upsample": "resize"}
  model, hop, key = Codec(**kwargs), 64, jax.random.key(0, impl="rbg")
  variables = codec_trainer.run_once(model.init, key, jnp.zeros((1, 4 * hop)))
  codes = jax.random.randint(key, (1, 8, 16), 0, kwargs["codebook_size"])
  full = jax.jit(functools.partial(model.apply, method=Codec.decode))(variables, codes)
  step = jax.jit(functools.partial(model.apply, method=Codec.stream_decode, mutable=["stream"]))
  stream, pieces = {}, []
  for start in range(0, 16, 2):
    out, state = step({**variables, **stream}, codes[..., start:start + 2])
    stream = dict(state)
    pieces.append(out)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-5)

  latent = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (1, 1, 16)), (1, 24, 16))

  def steady_tone(upsample: str) -> float:
    """Peak-to-peak of the output over the middle frames of a steady latent input."""
    decoder = codec_lib.Decoder(kwargs["decoder_channels"], tuple(reversed(kwargs["strides"])),
                                upsample=upsample)
    audio = codec_trainer.run_once(
        lambda z: decoder.apply(decoder.init(jax.random.key(1), z), z), latent)
    return float(np.ptp(np.asarray(audio)[0, 8 * hop:16 * hop, 0]))

  assert steady_tone("resize") < 1e-5
  assert steady_tone("transposed") > 1e-3
