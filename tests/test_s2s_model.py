"""The fixed S2S variant's invariants: causality, true cross-attention, streaming encoder, rotary
positions, cached decoding, the delay pattern and teacher forcing; plus configs/s2s.py."""

import dataclasses
import functools
import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import relative_error
from flax import linen as nn

from configs import s2s as s2s_configs
from telugu_jax import losses
from telugu_jax.inference import generation
from telugu_jax.models.s2s import (MATVEC_SPLITS, Dropout, S2SConfig, S2STransformer,
                                   _dense_dot_general, chunk_mask, delay_codes, depthwise_conv1d,
                                   init_encoder_state, keep_mask, rotary, teacher_forcing, undelay)

TOL = 1e-4
TINY = S2SConfig(hidden_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                 ffn_dim=128, conv_kernel_size=7, vocab_size=32, chunk_size=5, lookahead=2,
                 delays=(0, 1, 1, 2, 1, 1, 1, 1))


def random_variables(config: S2SConfig, seed: int = 0):
  """The model and random variables (traced shapes, numpy values: no compilation): kernels and
  embeddings scaled by fan-in, LayerScale at 1 and non-trivial norm parameters and BatchNorm
  statistics, so that every branch matters in the comparisons."""
  model = S2STransformer(config)
  codes = jnp.zeros((1, config.num_quantizers, 4), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), codes, codes,
                          jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("_scale']"):
      return np.ones(leaf.shape, np.float32)
    if name.endswith("['scale']") or name.endswith("['var']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name.endswith("['bias']") or name.endswith("['mean']"):
      return rng.uniform(-0.2, 0.2, leaf.shape).astype(np.float32)
    fan_in = 1 if name.endswith("['embedding']") else np.prod(leaf.shape[:-1]) // (
        3 if "qkv" in name else 1)
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(value, shapes)


@pytest.fixture(scope="module")
def tiny():
  return random_variables(TINY)


def random_codes(config, shape, seed):
  return jnp.asarray(np.random.default_rng(seed).integers(0, config.vocab_size, shape), jnp.int32)


@functools.partial(jax.jit, static_argnames="model")
def encode(model, variables, codes, speaker):
  style = model.apply(variables, speaker, speaker, method="style")
  return model.apply(variables, codes, style, method="encode")


@functools.partial(jax.jit, static_argnames="model")
def forward(model, variables, codes, decoder_input):
  speaker = jnp.zeros(codes.shape[0], jnp.int32)
  return model.apply(variables, codes, decoder_input, speaker, speaker)


def test_streaming_encoder_matches_masked_full_forward(tiny):
  """Chunk by chunk (and several chunks per step; lookahead frames read ahead; a short last
  chunk) equals the full forward under the chunk mask, for two streams of different lengths."""
  model, variables = tiny
  c = model.config
  lengths = np.array([23, 16])
  codes = random_codes(c, (2, 8, 23), 0)
  codes = jnp.where(jnp.arange(23) < lengths[:, None, None], codes, c.pad_id)
  speaker = jnp.array([1, 2])
  full, mask = encode(model, variables, codes, speaker)
  np.testing.assert_array_equal(mask, np.arange(23)[None] < lengths[:, None])

  style = model.apply(variables, speaker, speaker, method="style")
  step = jax.jit(functools.partial(model.apply, method="encode_chunks"))
  state = init_encoder_state(c, 2, 25)
  padded = jnp.pad(codes, ((0, 0), (0, 0), (0, 25 + c.lookahead - 23)), constant_values=c.pad_id)
  outputs = []
  for start, n in ((0, 1), (5, 1), (10, 2), (20, 1)):  # chunk by chunk, then two at once
    window = padded[..., start:start + n * c.chunk_size + c.lookahead]
    out, state = step(variables, window, style, state, jnp.asarray(lengths))
    outputs.append(out)
  streamed = jnp.concatenate(outputs, axis=1)[:, :23]
  blocked, blocked_mask = generation.encode_in_chunks(model, variables, codes, style,
                                                      block_chunks=3)
  np.testing.assert_array_equal(blocked_mask, mask)
  for b, n in enumerate(lengths):
    assert relative_error(streamed[b, :n], full[b, :n]) < TOL
    assert relative_error(blocked[b, :n], full[b, :n]) < TOL


def test_encoder_looks_ahead_lookahead_frames_and_no_further(tiny):
  """Changing input frame j changes encoder frame i < j only if j < end of i's chunk + lookahead:
  the lookahead does not compound over layers."""
  model, variables = tiny
  c = model.config
  codes = random_codes(c, (1, 8, 30), 1)
  base, _ = encode(model, variables, codes, jnp.array([0]))
  j = 21
  changed, _ = encode(model, variables, codes.at[:, :, j].set((codes[:, :, j] + 1) % 32),
                      jnp.array([0]))
  differs = np.abs(np.asarray(changed - base)).max(-1)[0] > 1e-5
  visible = chunk_mask(30, c.chunk_size, c.lookahead)[:, j]
  np.testing.assert_array_equal(differs[:j], visible[:j])  # frames 15 to 20
  assert differs[j:].all()


def test_decoder_is_causal_and_reads_the_encoder(tiny):
  model, variables = tiny
  c = model.config
  codes = random_codes(c, (1, 8, 12), 2)
  decoder_input = teacher_forcing(c, random_codes(c, (1, 8, 9), 3)).decoder_input  # [1, 8, 12]
  logits = forward(model, variables, codes, decoder_input)
  t = 6
  later = forward(model, variables, codes, decoder_input.at[:, :, t:].set(4))
  np.testing.assert_allclose(later[:, :, :t], logits[:, :, :t], atol=1e-5)
  assert np.abs(np.asarray(later[:, :, t:] - logits[:, :, t:])).max() > 1e-3
  other_input = forward(model, variables, (codes + 1) % 32, decoder_input)
  assert np.abs(np.asarray(other_input - logits)).max() > 1e-3


def test_original_variant_keeps_its_defects():
  """original: teacher forcing sees the future and the encoder output is never read."""
  model, variables = random_variables(dataclasses.replace(TINY, variant="original", delays=()))
  codes = random_codes(model.config, (1, 8, 12), 2)
  decoder_input = random_codes(model.config, (1, 8, 9), 3)
  logits = forward(model, variables, codes, decoder_input)
  later = forward(model, variables, codes, decoder_input.at[:, :, 6:].set(4))
  assert np.abs(np.asarray(later[:, :, :6] - logits[:, :, :6])).max() > 1e-3
  np.testing.assert_array_equal(forward(model, variables, (codes + 1) % 32, decoder_input), logits)


def test_fixed_block_with_zero_layer_scale_is_identity(tiny):
  """Residual added once, LayerScale on the branches: zero scales leave the stream unchanged."""
  model, variables = tiny
  c = model.config
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if jax.tree_util.keystr(p).endswith("_scale']") and
      "encoder" in jax.tree_util.keystr(p) else x, variables["params"])
  variables = {**variables, "params": params}
  codes = random_codes(c, (1, 8, 10), 4)
  speaker = jnp.array([3])
  out, _ = encode(model, variables, codes, speaker)

  def embedded_then_norm(module, codes, style):
    return module.encoder_norm(module._embed(codes, style))

  style = model.apply(variables, speaker, speaker, method="style")
  expected = model.apply(variables, codes, style, method=embedded_then_norm)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cached_decoding_matches_teacher_forcing(tiny):
  model, variables = tiny
  c = model.config
  codes = random_codes(c, (2, 8, 14), 5)
  codes = codes.at[1, :, 11:].set(c.pad_id)  # a shorter second input
  batch = teacher_forcing(c, random_codes(c, (2, 8, 7), 6), jnp.array([7, 4]))
  logits = forward(model, variables, codes, batch.decoder_input)

  speaker = jnp.zeros(2, jnp.int32)
  style = model.apply(variables, speaker, speaker, method="style")
  memory, memory_mask = encode(model, variables, codes, speaker)
  steps = batch.decoder_input.shape[-1]
  cache = jax.jit(functools.partial(model.apply, method="init_cache"), static_argnums=4)(
      variables, style, memory, memory_mask, steps + 3)
  decode_step = jax.jit(functools.partial(model.apply, method="decode_step"))
  cached = []
  for t in range(steps):
    out, cache = decode_step(variables, batch.decoder_input[:, :, t], cache, jnp.int32(t))
    cached.append(out)
  assert relative_error(jnp.stack(cached, axis=2), logits) < TOL


def test_rotary_scores_depend_on_relative_position_only():
  rng = np.random.default_rng(7)
  q, k = (jnp.asarray(rng.standard_normal((1, 2, 1, 16)), jnp.float32) for _ in range(2))

  def score(i, j):
    return jnp.sum(rotary(q, jnp.array([i]), 10000.0) * rotary(k, jnp.array([j]), 10000.0))

  np.testing.assert_allclose(score(3, 1), score(103, 101), rtol=1e-4)
  np.testing.assert_allclose(score(0, 0), jnp.sum(q * k), rtol=1e-5)
  assert abs(float(score(5, 1) - score(1, 5))) > 1e-3


def test_delay_round_trip():
  delays = (0, 1, 3, 2)
  codes = jnp.asarray(np.random.default_rng(8).integers(0, 10, (2, 4, 6)))
  delayed = delay_codes(codes, delays, before=-1, after=-2)
  assert delayed.shape == (2, 4, 9)
  np.testing.assert_array_equal(delayed[:, 2, :3], -1)
  np.testing.assert_array_equal(delayed[:, 1, 7:], -2)
  np.testing.assert_array_equal(delayed[:, 3, 2:8], codes[:, 3])
  np.testing.assert_array_equal(undelay(delayed, delays), codes)


def test_teacher_forcing_layout():
  c = dataclasses.replace(TINY, num_quantizers=2, hidden_dim=64, delays=(0, 1))
  bos, eos, pad = c.start_id, c.eos_id, c.pad_id
  assert (eos, bos, pad) == (32, 33, 34) and c.num_outputs == 33 and c.num_embeddings == 35
  codes = jnp.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 0], [9, 10, 0]]])
  batch = teacher_forcing(c, codes, jnp.array([3, 2]))
  np.testing.assert_array_equal(batch.targets[0], [[1, 2, 3, eos, 0], [0, 4, 5, 6, eos]])
  np.testing.assert_array_equal(batch.targets[1], [[7, 8, eos, 0, 0], [0, 9, 10, eos, 0]])
  np.testing.assert_array_equal(batch.weights[1], [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
  np.testing.assert_array_equal(batch.decoder_input[0],
                                [[bos, 1, 2, 3, eos], [bos, bos, 4, 5, 6]])
  np.testing.assert_array_equal(batch.decoder_input[1],
                                [[bos, 7, 8, eos, pad], [bos, bos, 9, 10, eos]])
  original = dataclasses.replace(c, variant="original", delays=())
  batch = teacher_forcing(original, codes)
  np.testing.assert_array_equal(batch.decoder_input[0], [[0, 1, 2], [0, 4, 5]])
  np.testing.assert_array_equal(batch.targets, codes)


def test_config_validation_and_round_trip():
  with pytest.raises(ValueError, match="delays"):
    S2SConfig(delays=(1, 0, 0, 0, 0, 0, 0, 0))
  with pytest.raises(ValueError, match="one entry per level"):
    S2SConfig(delays=(0, 1))
  with pytest.raises(ValueError, match="original variant has no delay"):
    S2SConfig(variant="original", delays=(0, 1, 1, 1, 1, 1, 1, 1))
  with pytest.raises(ValueError, match="variant"):
    S2SConfig(variant="new")
  assert S2SConfig.from_dict(TINY.to_dict()) == TINY


def test_configs_file():
  default = s2s_configs.get_config()
  assert default.task == "s2s"
  model = S2SConfig.from_dict(default.model.to_dict())
  assert model.variant == "fixed" and model.delays == (0, 1, 1, 1, 1, 1, 1, 1)
  assert dataclasses.replace(model, variant="original", delays=()) == S2SConfig(
      variant="original")
  assert S2SConfig.from_dict(s2s_configs.get_config("original").model.to_dict()) == S2SConfig(
      variant="original")
  smoke = S2SConfig.from_dict(s2s_configs.get_config("smoke").model.to_dict())
  assert smoke.hidden_dim == 64
  with pytest.raises(AttributeError):
    default.model.hiden_dim = 3  # locked: typos fail
  with pytest.raises(ValueError, match="unknown"):
    s2s_configs.get_config("big")


def test_single_row_dense_splits_the_contraction():
  """One row (batch-1 decoding) is computed as MATVEC_SPLITS partial products over slices of the
  contraction; any other shape goes to `lax.dot_general` unchanged. Both equal the plain product."""
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(64, 48)), jnp.float32)
  for shape in [(1, 1, 64), (1, 64), (3, 64), (2, 5, 64)]:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    expected = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    numbers = (((x.ndim - 1,), (0,)), ((), ()))
    got = _dense_dot_general(x, kernel, numbers)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  hlo = jax.jit(lambda x: _dense_dot_general(x, kernel, (((1,), (0,)), ((), ())))
                ).lower(jnp.ones((1, 64))).as_text()
  assert f"{MATVEC_SPLITS}x32xf32" in hlo  # the kernel viewed as [splits, K/splits, N]


def _numpy_keep_mask(key_words, keep_prob, shape):
  """The hash `keep_mask` documents, written with NumPy's wrapping uint32 arithmetic."""
  h = np.arange(np.prod(shape), dtype=np.uint32)
  for word in np.asarray(key_words, np.uint32):
    h ^= word
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
      h = (h ^ (h >> np.uint32(shift))) * np.uint32(multiplier)
    h ^= h >> np.uint32(16)
  return (h < np.uint32(round(keep_prob * 2**32))).reshape(shape)


def test_keep_mask_is_the_documented_hash_and_draws_independent_bernoulli_masks():
  """`keep_mask` equals the hash written with NumPy (new-style and raw keys), keeps each element
  with probability `keep_prob`, and its masks look independent between neighbouring elements
  and between keys (agreement rates as for independent draws, within 5 standard errors)."""
  for key in (jax.random.key(3), jax.random.PRNGKey(4)):
    words = np.asarray(jax.random.key_data(key))
    for shape in [(7,), (2, 3, 5), (4, 8, 20, 20)]:
      np.testing.assert_array_equal(jax.jit(keep_mask, static_argnums=(1, 2))(key, 0.9, shape),
                                    _numpy_keep_mask(words, 0.9, shape))

  n = 1 << 20
  within = lambda rate, expected: abs(rate - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
  for p in (0.9, 0.3):
    agree = p * p + (1 - p) * (1 - p)
    base = jax.random.key(11)
    a = np.asarray(keep_mask(base, p, (n,)))
    b = np.asarray(keep_mask(jax.random.fold_in(base, 1), p, (n,)))
    c = np.asarray(keep_mask(jax.random.fold_in(base, 2), p, (n,)))
    assert within(a.mean(), p) and within(b.mean(), p)
    assert within(np.mean(a[1:] == a[:-1]), agree)  # neighbours
    assert within(np.mean(a[512:] == a[:-512]), agree)  # the same channel, next frame
    assert within(np.mean(a == b), agree) and within(np.mean(b == c), agree)  # sibling keys


def test_dropout_module_drops_at_its_rate_with_a_mask_per_module():
  """`Dropout` keeps `x / keep` where `keep_mask` of its `make_rng("dropout")` keeps, zero
  elsewhere, as `nn.Dropout` does with its mask; two modules draw different masks; the
  deterministic call returns its input."""

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      return Dropout(0.3)(x, deterministic=False), Dropout(0.3)(x, deterministic=False)

  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, size=(8, 64, 128)), jnp.float32)
  for key in (jax.random.key(1), jax.random.PRNGKey(2)):
    first, second = Block().apply({}, x, rngs={"dropout": key})
    for y in (first, second):
      kept = np.asarray(y) != 0
      np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.7, rtol=1e-6)
      assert abs(kept.mean() - 0.7) < 0.01
    agreement = np.mean((np.asarray(first) != 0) == (np.asarray(second) != 0))
    assert abs(agreement - (0.7**2 + 0.3**2)) < 0.01

  class Single(nn.Module):
    dropout: type

    @nn.compact
    def __call__(self, x):
      return self.dropout(0.3)(x, deterministic=False)

  # nn.Dropout with keep_mask in place of jax.random.bernoulli: the same stream, scaling, zeros.
  key = jax.random.key(5)
  with unittest.mock.patch.object(jax.random, "bernoulli",
                                  lambda rng, p, shape: keep_mask(rng, p, tuple(shape))):
    expected = Single(nn.Dropout).apply({}, x, rngs={"dropout": key})
  np.testing.assert_array_equal(Single(Dropout).apply({}, x, rngs={"dropout": key}), expected)
  assert Dropout(0.5).apply({}, x, deterministic=True) is x


@pytest.mark.parametrize("padding", [(6, 0), (3, 3), (0, 0)])
def test_depthwise_conv_gradient_equals_automatic_differentiation(padding):
  """The written-out gradient of `depthwise_conv1d` (causal, centred, unpadded) equals that of
  the plain sum of shifted products."""
  rng = np.random.default_rng(1)
  x, kernel, bias, weights = (jnp.asarray(rng.normal(size=s), jnp.float32)
                              for s in [(2, 11, 5), (7, 5), (5,), (2, 11 + sum(padding) - 6, 5)])

  def plain(x, kernel, bias):
    padded = jnp.pad(x, ((0, 0), padding, (0, 0)))
    return sum(padded[:, i:i + weights.shape[1]] * kernel[i] for i in range(7)) + bias

  loss = lambda f: lambda *args: jnp.sum(jnp.tanh(f(*args)) * weights)
  fast = lambda x, kernel, bias: depthwise_conv1d(x, kernel, bias, padding)
  np.testing.assert_array_equal(fast(x, kernel, bias), plain(x, kernel, bias))
  for got, expected in zip(jax.grad(loss(fast), argnums=(0, 1, 2))(x, kernel, bias),
                           jax.grad(loss(plain), argnums=(0, 1, 2))(x, kernel, bias)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_masked_cross_entropy_picks_like_gather_and_argmax():
  """The one-hot target pick and the first-maximum hit count equal `take_along_axis` and
  `argmax`, with ties, all-equal rows and NaN."""
  rng = np.random.default_rng(2)
  logits = np.round(rng.normal(size=(2, 3, 6, 9)) * 2).astype(np.float32)  # many ties
  logits[0, 0, 0] = 0.0
  logits[1, 2, 1, [2, 5]] = np.nan
  targets = rng.integers(0, 9, (2, 3, 6)).astype(np.int32)
  targets[0, 0, :3] = np.argmax(logits[0, 0, :3], -1)
  targets[1, 2, 1] = 2
  weights = (rng.random((2, 3, 6)) > 0.2).astype(np.float32)
  _, sums = losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                        jnp.asarray(weights))
  log_probs = jax.nn.log_softmax(jnp.asarray(logits))
  nll = -jnp.take_along_axis(log_probs, jnp.asarray(targets)[..., None], -1)[..., 0]
  correct = (jnp.argmax(jnp.asarray(logits), -1) == targets).astype(np.float32)
  np.testing.assert_array_equal(sums["nll"], jnp.sum(nll * weights, axis=(0, 2)))
  np.testing.assert_array_equal(sums["correct"], jnp.sum(correct * weights, axis=(0, 2)))
  assert float(jnp.sum(sums["correct"])) > 0
