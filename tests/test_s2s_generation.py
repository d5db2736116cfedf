"""Generation: the sampler, the while-loop generator against teacher forcing, end-of-speech with a
delay pattern, the streaming generator and compilation once per shape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from telugu_jax.inference import generation
from telugu_jax.models.s2s import teacher_forcing, undelay
from test_s2s_model import TINY, encode, random_codes, random_variables

GREEDY = generation.Sampling.make(temperature=0.0)


@pytest.fixture(scope="module")
def tiny():
  return random_variables(TINY, seed=3)


def with_eos_bias(variables, shift: float, level: int = 0):
  """Adds `shift` to the end-of-speech logit of one level's head."""
  params = jax.tree.map(lambda x: x, variables["params"])
  head = params[f"output_heads_{level}"]
  head["bias"] = jnp.asarray(head["bias"]).at[TINY.eos_id].add(shift)
  return {**variables, "params": params}


def run(model, variables, inputs, sampling=GREEDY, seed=0, max_frames=12):
  speaker = jnp.zeros(inputs.shape[0], jnp.int32)
  return generation.generate(model, variables, inputs, speaker, speaker, sampling,
                             jnp.int32(seed), max_frames=max_frames)


def stream(model, variables, inputs, sampling=GREEDY, seed=0, max_frames=12, frames_per_call=4):
  speaker = jnp.zeros(inputs.shape[0], jnp.int32)
  return generation.stream(model, variables, inputs, speaker, speaker, sampling, jnp.int32(seed),
                           max_frames=max_frames, frames_per_call=frames_per_call)


@functools.partial(jax.jit, static_argnames="model")
def teacher_forced_logits(model, variables, inputs, targets, lengths=None):
  speaker = jnp.zeros(inputs.shape[0], jnp.int32)
  batch = teacher_forcing(model.config, targets, lengths)
  return model.apply(variables, inputs, batch.decoder_input, speaker, speaker)


def test_sampler_cuts():
  logits = jnp.log(jnp.array([0.05, 0.5, 0.15, 0.3]))
  keys = jax.random.split(jax.random.key(0), 4000)

  @jax.jit
  def draw(temperature, top_k, top_p):
    sampling = generation.Sampling(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    return jax.vmap(lambda k: generation.sample_logits(logits, k, sampling))(keys)

  counts = lambda x: np.bincount(np.asarray(x), minlength=4) / len(x)
  np.testing.assert_array_equal(draw(0.0, 0, 1.0), 1)  # greedy
  np.testing.assert_array_equal(draw(1.0, 1, 1.0), 1)  # top-1
  np.testing.assert_array_equal(draw(1.0, 0, 1e-3), 1)  # tiny nucleus
  np.testing.assert_allclose(counts(draw(1.0, 0, 1.0)), [0.05, 0.5, 0.15, 0.3], atol=0.03)
  np.testing.assert_allclose(counts(draw(1.0, 2, 1.0)), [0, 0.625, 0, 0.375], atol=0.03)
  # Nucleus 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it; the rest is cut.
  np.testing.assert_allclose(counts(draw(1.0, 0, 0.7)), [0, 0.625, 0, 0.375], atol=0.03)
  # Top-2 first ({0.5, 0.3}), then the nucleus over the renormalised 0.625 / 0.375: 0.625 >= 0.6.
  np.testing.assert_array_equal(draw(1.0, 2, 0.6), 1)
  sharp = counts(draw(0.5, 0, 1.0))  # temperature 0.5 squares the probabilities
  np.testing.assert_allclose(sharp, np.array([0.05, 0.5, 0.15, 0.3]) ** 2 / 0.365, atol=0.03)
  with pytest.raises(ValueError):
    generation.Sampling.make(top_p=0.0)


def test_greedy_generation_follows_teacher_forcing_and_stops_at_end_of_speech(tiny):
  """With end-of-speech disabled, greedy codes are the teacher-forced argmax of themselves.
  Raising the end-of-speech bias so that it first wins at step k must stop there: k frames, the
  same codes where they were decided by then, padding after, although the delay pattern needs
  max_delay more steps to complete the last frames."""
  model, variables = tiny
  c = model.config
  no_end = with_eos_bias(variables, -100.0)
  # margin[t]: how far end-of-speech (at its own bias) is below the best code at step t. Raising
  # its bias by s stops generation at the first t with margin[t] < s. Take an input for which
  # that can happen first at a step k >= 3.
  for seed in range(20):
    inputs = random_codes(c, (1, 8, 17), seed)
    codes, lengths = run(model, no_end, inputs)
    logits = teacher_forced_logits(model, no_end, inputs, codes)  # [1, 8, 12 + 1 + delay, 33]
    level0 = logits[0, 0, :12]  # level 0 has no delay: step t predicts frame t
    margin = np.asarray(jnp.max(level0[:, :c.vocab_size], -1) - (level0[:, c.eos_id] + 100.0))
    candidates = [t for t in range(3, 10) if margin[t] < margin[:t].min()]
    if candidates:
      break
  k = candidates[-1]
  assert int(lengths[0]) == 12 and codes.shape == (1, 8, 12)
  assert codes.max() < c.vocab_size
  code_logits = undelay(logits, c.level_delays)[:, :, :12, :c.vocab_size]
  np.testing.assert_array_equal(jnp.argmax(code_logits, -1), codes)

  stopping = with_eos_bias(variables, (margin[k] + margin[:k].min()) / 2)
  codes_k, lengths_k = run(model, stopping, inputs)
  assert int(lengths_k[0]) == k
  # Codes decided up to step k (frame f of level q is decided at step f + delays[q]) are the same;
  # later steps see end-of-speech in their input instead of a code, so may differ.
  decided = np.arange(k)[None, :] + np.array(c.level_delays)[:, None] <= k  # [Q, k]
  np.testing.assert_array_equal(codes_k[0, :, :k][decided], codes[0, :, :k][decided])
  assert (~decided).any() and codes_k[:, :, :k].max() < c.vocab_size
  np.testing.assert_array_equal(codes_k[:, :, k:], c.pad_id)
  frames = list(stream(model, stopping, inputs))
  assert len(frames) == k

  # End-of-speech belongs to level 0: other levels never emit it, however likely.
  codes_other, _ = run(model, with_eos_bias(no_end, 1e4, level=3), inputs)
  np.testing.assert_array_equal(codes_other, codes)


def test_stream_yields_the_generated_frames(tiny):
  model, variables = tiny
  c = model.config
  inputs = random_codes(c, (2, 8, 15), 8)
  inputs = inputs.at[1, :, 9:].set(c.pad_id)
  variables = with_eos_bias(variables, 2.5)  # make end-of-speech likely within 12 frames
  sampling = generation.Sampling.make(temperature=1.0, top_k=20, top_p=0.9)
  codes, lengths = run(model, variables, inputs, sampling, seed=10)
  frames = list(stream(model, variables, inputs, sampling, seed=10))
  assert len(frames) == int(lengths.max())
  assert 0 < min(lengths) < max(lengths)  # sequences end at different frames (these seeds)
  np.testing.assert_array_equal(np.stack(frames, axis=-1), codes[:, :, :len(frames)])
  for frames_per_call in (1, 5, 100):
    np.testing.assert_array_equal(
        list(stream(model, variables, inputs, sampling, seed=10, frames_per_call=frames_per_call)),
        frames)
  with pytest.raises(ValueError, match="frames_per_call"):
    next(stream(model, variables, inputs, frames_per_call=0))
  again, _ = run(model, variables, inputs, sampling, seed=10)
  other, _ = run(model, variables, inputs, sampling, seed=11)
  np.testing.assert_array_equal(again, codes)
  assert (np.asarray(other) != np.asarray(codes)).any()


def test_long_context_compiles_the_step_once(tiny):
  """A 12,000-frame input and a 12,000-frame cache: the jitted decoding call compiles once for
  the shape and then runs call after call without recompiling."""
  model, variables = tiny
  inputs = random_codes(model.config, (1, 8, 12_000), 9)
  frames = stream(model, variables, inputs, max_frames=12_000)
  next(frames)
  compiled = generation.advance._cache_size()
  for _ in range(12):  # three more calls of 4 frames
    next(frames)
  assert generation.advance._cache_size() == compiled
  frames.close()


def test_incremental_encoder_equals_the_whole_question_however_it_arrives(tiny):
  """Codes pushed in random pieces, past the question's end too (a turn's end is decided after
  it): `finish(frames)` gives the encoder output of the first `frames` frames (the masked full
  `encode`, padded to the bucket width), and decoding from it gives `stream`'s frames."""
  model, variables = tiny
  c = model.config  # chunk_size 5, lookahead 2
  codes = np.asarray(random_codes(c, (8, 40), 12))
  speaker = jnp.zeros(1, jnp.int32)
  encoder = generation.IncrementalEncoder(model, variables, 0, 0, capacity=40, keep_steps=2)
  rng = np.random.default_rng(0)
  for frames, extra in ((23, 0), (23, 4), (17, 12), (3, 0), (10, 9), (40, 0)):
    pushed = 0
    while pushed < frames + extra:
      size = int(rng.integers(0, 7))
      encoder.push(codes[:, pushed:min(pushed + size, frames + extra)])
      pushed = min(pushed + size, frames + extra)
    width = 45
    memory, mask = encoder.finish(frames, width)
    question = jnp.asarray(codes[None, :, :frames])
    padded = jnp.pad(question, ((0, 0), (0, 0), (0, width - frames)), constant_values=c.pad_id)
    expected, expected_mask = encode(model, variables, padded, speaker)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(np.asarray(memory)[0, :frames], np.asarray(expected)[0, :frames],
                               atol=2e-5, rtol=1e-5, err_msg=f"{frames} + {extra} frames")
    assert not np.asarray(memory)[0, frames:].any()
  # More frames pushed than the kept states can undo: re-encoded from the start.
  encoder.push(codes)
  memory, _ = encoder.finish(6, 10)
  expected, _ = encode(model, variables, jnp.pad(jnp.asarray(codes[None, :, :6]),
                                                 ((0, 0), (0, 0), (0, 4)), constant_values=c.pad_id),
                       speaker)
  np.testing.assert_allclose(np.asarray(memory)[0, :6], np.asarray(expected)[0, :6], atol=2e-5)
  # Decoding from the incremental memory: the frames of `stream` on the padded question.
  encoder.push(codes[:, :30])
  memory, mask = encoder.finish(23, 30)
  style = model.apply(variables, speaker, speaker, method="style")
  state = generation.state_from_memory(model, variables, style, memory, mask, jnp.int32(0),
                                       max_frames=12)
  frames = list(generation.stream_from_state(model, variables, state, GREEDY, max_frames=12))
  padded = jnp.pad(jnp.asarray(codes[None, :, :23]), ((0, 0), (0, 0), (0, 7)),
                   constant_values=c.pad_id)
  np.testing.assert_array_equal(frames, list(stream(model, variables, padded)))
  with pytest.raises(ValueError, match="no code frames"):
    encoder.finish(5)


def beam(model, variables, inputs, beam_size, max_frames=12, length_penalty=1.0):
  speaker = jnp.zeros(inputs.shape[0], jnp.int32)
  return generation.beam_search(model, variables, inputs, speaker, speaker, max_frames=max_frames,
                                beam_size=beam_size, length_penalty=length_penalty)


def answer_log_prob(model, variables, inputs, codes, lengths, max_frames=12):
  """Teacher-forced log-probability of answers `codes [B, Q, T]` of `lengths`: level 0's codes
  and end-of-speech (none after `max_frames` frames: the answer was cut), the other levels' codes
  (end-of-speech excluded from their classes)."""
  c = model.config
  forcing = teacher_forcing(c, codes, lengths)
  logits = teacher_forced_logits(model, variables, inputs, codes, lengths)
  logits = logits.at[:, 1:, :, c.eos_id].set(-jnp.inf)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), forcing.targets[..., None],
                                  -1)[..., 0]
  level = jnp.arange(c.num_quantizers)[None, :, None]
  cut = jnp.asarray(lengths)[:, None, None] >= max_frames
  counted = ((forcing.weights > 0) & ((forcing.targets != c.eos_id) | (level == 0))
             & ~((forcing.targets == c.eos_id) & cut))
  return np.asarray(jnp.sum(jnp.where(counted, log_probs, 0.0), axis=(1, 2)))


def with_flatter_heads(variables, scale: float):
  """Every output head's kernel times `scale`: flatter distributions, more branching beams."""
  params = jax.tree.map(lambda x: x, variables["params"])
  for q in range(TINY.num_quantizers):
    head = params[f"output_heads_{q}"]
    head["kernel"] = jnp.asarray(head["kernel"]) * scale
  return {**variables, "params": params}


@pytest.mark.parametrize("head_scale, eos_bias", [(1.0, 3.0), (0.5, 0.5)])
def test_beam_search_scores_its_answers_and_beats_greedy(tiny, head_scale, eos_bias):
  """Beam size 1 is greedy decoding. A wider beam returns answers whose score is their own
  teacher-forced log-probability (over frames + 1 with length penalty 1), at least as likely as
  the greedy answer, with levels 1.. at their most likely codes. Two models: one where some
  greedy answers end early, one whose flatter heads make the beams swap their histories."""
  model, variables = tiny
  c = model.config
  variables = with_eos_bias(with_flatter_heads(variables, head_scale), eos_bias)
  inputs = random_codes(c, (4, 8, 15), 21)
  inputs = inputs.at[1, :, 9:].set(c.pad_id)
  greedy_codes, greedy_lengths = run(model, variables, inputs)
  codes, lengths, scores = beam(model, variables, inputs, beam_size=1)
  np.testing.assert_array_equal(codes, greedy_codes)
  np.testing.assert_array_equal(lengths, greedy_lengths)
  greedy_log_prob = answer_log_prob(model, variables, inputs, greedy_codes, greedy_lengths)
  np.testing.assert_allclose(scores, greedy_log_prob / (np.asarray(greedy_lengths) + 1.0),
                             rtol=1e-5)

  for length_penalty in (0.0, 1.0):
    codes, lengths, scores = beam(model, variables, inputs, beam_size=8,
                                  length_penalty=length_penalty)
    lengths = np.asarray(lengths)
    for b, length in enumerate(lengths):
      np.testing.assert_array_equal(np.asarray(codes)[b, :, length:], c.pad_id)
    log_prob = answer_log_prob(model, variables, inputs, codes, lengths)
    np.testing.assert_allclose(scores, log_prob / (lengths + 1.0) ** length_penalty,
                               rtol=1e-5, atol=1e-5)
    if length_penalty == 0.0:
      assert np.all(log_prob >= greedy_log_prob - 1e-5)
      assert np.any(log_prob > greedy_log_prob + 1e-3)  # the beam finds more likely answers
    # Levels 1.. hold their most likely codes given the beam's past.
    logits = teacher_forced_logits(model, variables, inputs, codes, lengths)
    best = undelay(jnp.argmax(logits.at[:, 1:, :, c.eos_id].set(-jnp.inf), -1), c.level_delays)
    for b, length in enumerate(lengths):
      np.testing.assert_array_equal(best[b, 1:, :length], np.asarray(codes)[b, 1:, :length])
  with pytest.raises(ValueError, match="beam_size"):
    beam(model, variables, inputs, beam_size=0)
