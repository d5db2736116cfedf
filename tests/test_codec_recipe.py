"""The improved codec recipe: quantizer dropout, factorised codes, the 50 Hz `lowrate` variant.

The expectations are independent of the module: a numpy residual quantizer, hand-counted
gradients and EMA counts, and the strides' arithmetic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import with_overrides
from test_train_codec import tiny_config

from configs import codec as codec_configs
from telugu_jax import inference, losses
from telugu_jax.models import codec as codec_lib
from telugu_jax.models.codec import Codec, ResidualVQ
from telugu_jax.train import codec as trainer

B, T, D = 2, 5, 6


def _latent(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, T, D))


def _numpy_rvq(latent, codebooks, levels):
  """Reference EMA-codebook residual VQ: Euclidean nearest rows; example b sums `levels[b]`."""
  latent, out = np.asarray(latent, np.float64), np.zeros(latent.shape)
  codes = []
  residual = latent.copy()
  for q, codebook in enumerate(np.asarray(codebooks, np.float64)):
    distance = ((residual[..., None, :] - codebook) ** 2).sum(-1)  # [B, T, K]
    idx = distance.argmin(-1)
    step = codebook[idx]
    out += step * (q < np.asarray(levels))[:, None, None]
    residual -= step
    codes.append(idx)
  return out, np.stack(codes, 1)


@pytest.mark.parametrize("straight_through", ["per_level", "once"])
def test_quantizer_dropout_uses_only_the_first_k_levels(straight_through):
  vq = ResidualVQ(D, 8, 3, straight_through)
  variables = vq.init(jax.random.key(1), _latent())
  levels = jnp.array([1, 3])
  out = vq.apply(variables, _latent(), levels=levels)
  expected, codes = _numpy_rvq(_latent(), variables["params"]["codebooks"], levels)
  np.testing.assert_array_equal(out["codes"], codes)  # the codes do not depend on levels
  np.testing.assert_allclose(out["quantized"], expected, atol=1e-5)
  np.testing.assert_array_equal(out["level_mask"], [[1, 1], [0, 1], [0, 1]])
  # The decoder reads codes[:, :k]: the same as the first k levels' sum.
  np.testing.assert_allclose(vq.apply(variables, out["codes"][:1, :1], method=ResidualVQ.lookup),
                             expected[:1], atol=1e-5)

  # Straight-through gradient: per level, each active level passes the identity once.
  weight = jax.random.normal(jax.random.key(2), (B, T, D))
  grad = jax.grad(lambda x: jnp.sum(vq.apply(variables, x, levels=levels)["quantized"] * weight))(
      _latent())
  passes = np.array([1, 3]) if straight_through == "per_level" else np.array([1, 1])
  np.testing.assert_allclose(grad, weight * passes[:, None, None], rtol=1e-6)


def test_quantizer_dropout_leaves_dropped_levels_out_of_ema_and_vq_loss():
  vq = ResidualVQ(D, 8, 3)
  variables = vq.init(jax.random.key(1), _latent())
  out = vq.apply(variables, _latent(), train=True, levels=jnp.array([1, 2]))
  # Counts start at 0: after one update each level holds 0.01 per vector it quantized.
  np.testing.assert_allclose(out["ema_cluster_size"].sum(-1), 0.01 * T * np.array([2, 1, 0]),
                             rtol=1e-5)
  residuals, codewords = np.asarray(out["residuals"]), np.asarray(out["codewords"])
  error = ((codewords - residuals) ** 2).mean(axis=(2, 3))  # [n_q, B]
  mask = np.array([[1, 1], [0, 1], [0, 0]])
  expected = np.mean((error * mask).mean(1) * (1 + losses.VQ_COMMITMENT))
  np.testing.assert_allclose(losses.vq_loss(out["residuals"], out["codewords"],
                                            out["level_mask"]), expected, rtol=1e-5)
  # Without a mask: the original loss over every level.
  np.testing.assert_allclose(losses.vq_loss(out["residuals"], out["codewords"]),
                             error.mean(1).mean() * (1 + losses.VQ_COMMITMENT), rtol=1e-5)


def test_factorised_lookup_matches_a_numpy_reference():
  n_q, size, dim = 3, 7, 4
  vq = ResidualVQ(D, size, n_q, codebook_dim=dim)
  variables = vq.init(jax.random.key(3), _latent())
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])
  assert "vq" not in variables and params["codebooks"].shape == (n_q, size, dim)
  out = vq.apply(variables, _latent(4), levels=jnp.array([2, 3]))

  residual = np.asarray(_latent(4), np.float64)
  total = np.zeros_like(residual)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  for q in range(n_q):
    z_e = residual @ params[f"in_proj_{q}"]["kernel"] + params[f"in_proj_{q}"]["bias"]
    cosine = unit(z_e) @ unit(params["codebooks"][q]).T  # [B, T, K]
    idx = cosine.argmax(-1)
    np.testing.assert_array_equal(out["codes"][:, q], idx)
    z_q = params["codebooks"][q][idx]
    np.testing.assert_allclose(out["residuals"][q], z_e, atol=1e-5)
    np.testing.assert_allclose(out["codewords"][q], z_q, atol=1e-6)
    step = z_q @ params[f"out_proj_{q}"]["kernel"] + params[f"out_proj_{q}"]["bias"]
    total += step * np.array([q < 2, True])[:, None, None]
    residual = residual - step
  np.testing.assert_allclose(out["quantized"], total, atol=1e-4)
  lookup = vq.apply(variables, out["codes"], method=ResidualVQ.lookup)
  np.testing.assert_allclose(lookup[1], total[1], atol=1e-4)
  # Factorised codes learn their codebooks by gradient through the straight-through estimate.
  grads = jax.grad(lambda p: losses.vq_loss(*(lambda o: (o["residuals"], o["codewords"]))(
      vq.apply({"params": p}, _latent(4)))))(variables["params"])
  assert float(jnp.abs(grads["codebooks"]).sum()) > 0
  assert float(jnp.abs(grads["in_proj_0"]["kernel"]).sum()) > 0


def test_factorised_codes_refuse_a_single_straight_through_pass():
  with pytest.raises(ValueError, match="straight_through must be 'per_level'"):
    ResidualVQ(D, 8, 2, "once", codebook_dim=4).init(jax.random.key(0), _latent())


def test_faithful_parameter_tree_is_unchanged_by_the_options():
  config = codec_configs.get_config("smoke")
  variables = jax.eval_shape(lambda: Codec(**config.codec).init(jax.random.key(0),
                                                                 jnp.zeros((1, 4000))))
  assert set(variables) == {"params", "vq"}
  assert set(variables["params"]["quantizer"]) == {"codebooks"}
  assert variables["params"]["quantizer"]["codebooks"].shape == (8, 32, 16)


@pytest.mark.parametrize("variant,bits_per_second", [
    ("lowrate", 50 * 8 * 10), ("lowrate_streaming", 50 * 8 * 10), ("lowrate_demo", 50 * 8 * 8)])
def test_lowrate_is_50_frames_per_second_at_4_kbits_or_less(variant, bits_per_second):
  config = codec_configs.get_config(variant)
  strides, causal = tuple(config.codec.strides), config.codec.get("causal", False)
  assert np.prod(strides) == 320
  assert codec_lib.num_frames(16000, strides, causal) == 50
  assert codec_lib.num_samples(50, strides, causal) == 16000
  bits = 50 * config.codec.num_quantizers * np.log2(config.codec.codebook_size)
  assert bits == bits_per_second
  # The model itself, at tiny widths.
  tiny = Codec(**{**config.codec, "encoder_channels": (2, 2, 2, 2, 4), "hidden_dim": 4,
                  "decoder_channels": (4, 2, 2, 2, 2, 2), "codebook_size": 16})
  variables = jax.eval_shape(lambda: tiny.init(jax.random.key(0), jnp.zeros((1, 16000))))
  codes = jax.eval_shape(lambda v, x: tiny.apply(v, x, method=Codec.encode), variables,
                         jax.ShapeDtypeStruct((1, 16000), jnp.float32))
  assert codes.shape == (1, 8, 50)
  audio = jax.eval_shape(lambda v, c: tiny.apply(v, c, method=Codec.decode), variables, codes)
  assert audio.shape == (1, 16000)


def test_lowrate_recipe_trains_and_reloads_at_fewer_levels(tmp_path):
  # The lowrate recipe (factorised codes, quantizer dropout) at a 320-sample hop in two layers
  # and no mel term, so that it compiles in seconds; the full variant's shapes are checked above.
  config = with_overrides(
      codec_configs.get_config("lowrate"),
      **{"codec.strides": (16, 20), "codec.encoder_channels": (4, 8), "codec.hidden_dim": 16,
         "codec.decoder_channels": (8, 4, 4), "codec.codebook_size": 32,
         "codec.num_quantizers": 3, "loss_weights.mel": 0.0, "discriminator.periods": (2,),
         "discriminator.n_ffts": (256,), "discriminator.period_channels": (2, 2, 2, 2, 2),
         "discriminator.stft_channels": 2, "data.batch_size": 2, "data.crop_samples": 3200,
         "data.eval_folder": "", "total_steps": 2, "log_every": 1, "eval_every": 0,
         "checkpoint_every": 2})
  assert config.codec.codebook_dim and config.vq.quantizer_dropout > 0
  trainer.train_and_evaluate(config, str(tmp_path))
  codec = inference.load_codec(str(tmp_path))
  assert codec.codec_kwargs["codebook_dim"] == 8 and codec.num_frames(16000) == 50
  wave = np.random.default_rng(0).standard_normal((1, 6400)).astype(np.float32) * 0.1
  codes = codec.encode(wave)
  assert codes.shape == (1, 3, 20)
  one, every = codec.decode(codes, levels=1), codec.decode(codes)
  assert one.shape == every.shape == (1, 6400)
  assert np.abs(one - every).max() > 0  # the further levels add something


def test_reconstruction_warm_up_step_is_the_gan_step_without_the_discriminator():
  """Before `adversarial_start_step` the generator trains alone: its update equals the GAN
  step's with the adversarial and feature-matching weights at 0 (the discriminator then does
  not reach the generator's loss), and the discriminator's parameters and optimizer state pass
  through unchanged."""
  config = tiny_config()
  no_disc_terms = tiny_config(**{"loss_weights.adversarial": 0.0,
                                 "loss_weights.feature_matching": 0.0})
  audio = 0.1 * jax.random.normal(jax.random.key(3), (2, 2000))
  state = trainer.init_state(config, jax.random.key(0))
  warm, metrics = jax.jit(trainer.make_train_step(config, adversarial=False))(state, audio)
  gan, _ = jax.jit(trainer.make_train_step(no_disc_terms))(state, audio)
  for a, b in zip(jax.tree.leaves(warm["gen"]), jax.tree.leaves(gan["gen"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(warm["disc"]), jax.tree.leaves(state["disc"])):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(gan["disc"]),
                                            jax.tree.leaves(state["disc"])))
  assert float(metrics["adversarial"]) == float(metrics["disc_loss"]) == 0.0
  assert float(metrics["l1"]) > 0 and int(warm["step"]) == 1
