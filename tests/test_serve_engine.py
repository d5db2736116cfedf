"""The voice agent's model work (`telugu_jax/serve/engine.py`) in process: a question encoded
while it is spoken gives the answer of the question encoded whole."""

import jax.numpy as jnp
import numpy as np
import pytest

from telugu_jax.data import audio
from telugu_jax.inference import generation, load_codec, load_s2s
from telugu_jax.inference.postfilter import postfilter
from telugu_jax.serve import engine as engine_lib
from test_respond import save_tiny_models
from test_serve import save_endless_s2s

MAX_SECONDS = 0.2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("engine"))
  codec_dir, _ = save_tiny_models(directory, causal=True)
  return load_codec(codec_dir), load_s2s(save_endless_s2s(directory + "/endless"))


def question(seconds: float) -> np.ndarray:
  """A question whose loudness grows: the gains of its beginning are not the whole's."""
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * 16000)) / 16000
  wave = np.sin(2 * np.pi * 180 * t + 2 * np.sin(2 * np.pi * 3 * t)) + 0.3 * rng.standard_normal(
      t.size)
  return (0.02 * (1 + 4 * t / seconds) * wave).astype(np.float32)


def answer(engine, wave, stream=None):
  """The whole answer: its samples, and the stage times of `Answer.start`."""
  answer = engine_lib.Answer(engine, wave, 0, 0, seed=0, question=stream)
  timings = answer.start()
  parts = []
  while not answer.done:
    parts.append(answer.step()[0])
  answer.close()
  return np.concatenate(parts), timings


def streamed(engine, wave, pushed_seconds, rng):
  """A question stream pushed the first `pushed_seconds` of `wave` (then silence, if longer)
  in random pieces."""
  stream = engine_lib.QuestionStream(engine, 0, 0)
  total = int(pushed_seconds * 16000)
  audio_in = np.concatenate([wave, np.zeros(max(0, total - wave.size), np.float32)])[:total]
  start = 0
  while start < total:
    size = int(rng.integers(1, 3000))
    stream.push(audio_in[start:start + size])
    start += size
  return stream


def test_a_streamed_question_is_answered_as_the_whole_question(models):
  codec, s2s = models
  settings = engine_lib.GenerationSettings(max_seconds=MAX_SECONDS, temperature=0.0)
  rng = np.random.default_rng(1)
  wave = question(1.3)

  # Level gains from the whole question (it is shorter than level_seconds): exactly the answer
  # to the question encoded whole, whether the turn's end came before, at or after the pushes.
  engine = engine_lib.Engine(codec, s2s, settings, engine_lib.QuestionSettings(
      level_seconds=5.0, max_seconds=4.0))
  assert engine.streams_questions
  expected, whole = answer(engine, wave)
  assert "streamed_seconds" not in whole and expected.size > 0
  for pushed in (0.0, 0.7, 1.3, 2.1):
    samples, timings = answer(engine, wave, streamed(engine, wave, pushed, rng))
    np.testing.assert_allclose(samples, expected, atol=1e-5, err_msg=f"{pushed} s pushed")
    assert timings["streamed_seconds"] == 0.0  # held back until the gains were known

  # Gains from the first 0.5 s: the codes of the question scaled by them, and the answer to
  # those codes encoded whole.
  engine = engine_lib.Engine(codec, s2s, settings, engine_lib.QuestionSettings(
      level_seconds=0.5, max_seconds=4.0))
  stream = streamed(engine, wave, 1.8, rng)
  gain, peak_gain = audio.level_gains(wave[:8000])
  expected_codes = codec.encode((wave * gain * peak_gain)[None])[0]
  codes = stream.codes()[:, :expected_codes.shape[1]]
  # The random tiny codec (unit-normal weights) has near-ties that float rounding flips: its
  # stream steps of 1 to 16 frames are programs of their own (measured: 0.04% to 1.2% of the
  # codes, depending on how the audio was split).
  assert np.mean(codes == expected_codes) > 0.97
  samples, timings = answer(engine, wave, stream)
  assert timings["streamed_seconds"] == pytest.approx(1.3)
  state = generation.init_state(
      s2s.model, s2s.variables, jnp.asarray(engine.responder.question_codes(codes[None])),
      jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), jnp.int32(0), engine.max_frames)
  frames = list(generation.stream_from_state(s2s.model, s2s.variables, state,
                                             generation.Sampling.make(0.0), engine.max_frames))
  # The same frames decoded in one push instead of the answer's pushes (other programs: float
  # rounding, amplified by the random codec's unit-normal weights).
  decoder = engine.acquire_decoder()
  np.testing.assert_allclose(samples, decoder.push(np.stack(frames, -1)[0]), atol=1e-4)
  other, _ = answer(engine, wave)  # the whole question's own gains: another answer
  assert np.abs(other - samples).max() > 1e-3


def test_questions_stream_only_with_a_causal_codec(tmp_path, models):
  _, s2s = models
  codec_dir, _ = save_tiny_models(str(tmp_path))
  engine = engine_lib.Engine(load_codec(codec_dir), s2s, engine_lib.GenerationSettings())
  assert not engine.streams_questions
  with pytest.raises(ValueError, match="causal codec"):
    engine_lib.QuestionStream(engine, 0, 0)
  with pytest.raises(ValueError, match="level_seconds"):
    engine_lib.QuestionSettings(level_seconds=0)


def test_answers_through_the_streamed_post_filter(models):
  """The answer's audio, push by push through `StreamPostfilter`, is the post-filter of the
  unfiltered answer; the first push waits for the filter's lookahead."""
  codec, s2s = models
  wave = question(1.0)
  plain = engine_lib.Engine(codec, s2s, engine_lib.GenerationSettings(
      max_seconds=MAX_SECONDS, temperature=0.0))
  filtered = engine_lib.Engine(codec, s2s, engine_lib.GenerationSettings(
      max_seconds=MAX_SECONDS, temperature=0.0, postfilter="formant,pitch"))
  assert filtered.postfilter_latency_samples == 832
  hop = filtered.responder.hop
  assert filtered.first_push_frames == plain.first_push_frames + -(-832 // hop)
  expected, _ = answer(plain, wave)
  samples, _ = answer(filtered, wave)
  assert expected.size > 832
  # The first push is larger, so the decoder runs other programs: float rounding (see above).
  np.testing.assert_allclose(samples, postfilter(expected, "pitch,formant"), atol=1e-4)
  assert not np.allclose(samples, expected, atol=1e-3)
  with pytest.raises(ValueError, match="post-filters are"):
    engine_lib.GenerationSettings(postfilter="tilt")
