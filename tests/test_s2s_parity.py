"""The "original" S2S variant against the PyTorch reference of the original, through the converter.

Random PyTorch weights (with non-trivial norm parameters and BatchNorm statistics) are converted
by `telugu_jax.convert.s2s.convert_s2s_state_dict`; the encoder output, the teacher-forced logits,
a training-mode forward with its BatchNorm updates and gradients, and the per-frame KV-cached
generation loop must match.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import relative_error

import s2s_torch_reference as ref
from telugu_jax.convert.s2s import (CheckpointMismatchError, convert_s2s_state_dict,
                                    expected_shapes, find_s2s_state_dict, is_s2s_state_dict)
from telugu_jax.inference import generation
from telugu_jax.models.s2s import BatchNorm1d, S2SConfig, S2STransformer, teacher_forcing

TOL = 1e-4
TINY = dict(hidden_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=128,
            conv_kernel_size=7, vocab_size=32)


def torch_model(seed: int = 0, dropout: float = 0.1, **sizes) -> ref.S2STransformer:
  """A reference model in eval mode with randomised norm parameters and BatchNorm statistics."""
  torch.manual_seed(seed)
  model = ref.S2STransformer(ref.S2SConfig(dropout=dropout, **sizes)).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.3, 0.3)
      if isinstance(m, torch.nn.BatchNorm1d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(7)
  return model


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_grads_as_params(model: torch.nn.Module, state: dict) -> dict:
  """The reference's gradients in the converted parameter layout (None, never reached: zero)."""
  params = dict(model.named_parameters())
  grads = {k: v if k not in params else np.zeros_like(v) if params[k].grad is None
           else params[k].grad.numpy().copy() for k, v in state.items()}
  return convert_s2s_state_dict(grads, "original")[0]["params"]


def random_batch(config, batch: int, src: int, tgt: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, config.vocab_size, (batch, config.num_quantizers, src)),
          rng.integers(0, config.vocab_size, (batch, config.num_quantizers, tgt)),
          rng.integers(0, config.num_speakers, batch), rng.integers(0, config.num_emotions, batch))


@functools.partial(jax.jit, static_argnames="config")
def jax_forward(variables, config, inputs, targets, speaker, emotion):
  """Encoder output and teacher-forced logits."""
  model = S2STransformer(config)
  style = model.apply(variables, speaker, emotion, method="style")
  encoded, _ = model.apply(variables, inputs, style, method="encode")
  decoder_input = teacher_forcing(config, targets).decoder_input
  return encoded, model.apply(variables, inputs, decoder_input, speaker, emotion)


def torch_forward(model, inputs, targets, speaker, emotion):
  with torch.no_grad():
    logits, encoded = model(*(torch.as_tensor(a) for a in (inputs, targets, speaker, emotion)))
  return encoded.numpy(), logits.numpy()


def test_full_size_state_dict_converts_and_matches():
  model = torch_model()
  state = numpy_state(model)
  assert len(state) == 335
  assert sum(v.size for v in state.values()) == 71_687_206
  assert {k: v.shape for k, v in state.items()} == expected_shapes(S2SConfig())
  variables, model_config = convert_s2s_state_dict(state, "original")
  config = S2SConfig.from_dict(model_config)
  assert config == S2SConfig(variant="original")
  batch = random_batch(config, 1, 24, 12)
  encoded, logits = jax_forward(variables, config, *batch)
  torch_encoded, torch_logits = torch_forward(model, *batch)
  assert logits.shape == (1, 8, 12, 1024)
  assert relative_error(encoded, torch_encoded) < TOL
  assert relative_error(logits, torch_logits) < TOL


def test_tiny_batch_matches_reference():
  model = torch_model(**TINY)
  variables, model_config = convert_s2s_state_dict(numpy_state(model), "original")
  config = S2SConfig.from_dict(model_config)
  batch = random_batch(config, 3, 45, 17, seed=1)
  encoded, logits = jax_forward(variables, config, *batch)
  torch_encoded, torch_logits = torch_forward(model, *batch)
  assert relative_error(encoded, torch_encoded) < TOL
  assert relative_error(logits, torch_logits) < TOL


def test_training_forward_batch_stats_and_gradients_match():
  """Dropout off, BatchNorm in training mode: logits, running statistics and every gradient."""
  model = torch_model(dropout=0.0, **TINY).train()
  state = numpy_state(model)
  variables, model_config = convert_s2s_state_dict(state, "original")
  config = S2SConfig.from_dict({**model_config, "dropout": 0.0})  # not visible in the weights
  inputs, targets, speaker, emotion = random_batch(config, 2, 30, 11, seed=2)

  logits, _ = model(*(torch.as_tensor(a) for a in (inputs, targets, speaker, emotion)))
  loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), torch.as_tensor(targets).flatten())
  loss.backward()
  # The original decoder never reads the encoder (defect 2): encoder gradients are None (zero).
  torch_grads = torch_grads_as_params(model, state)
  torch_stats = convert_s2s_state_dict(numpy_state(model), "original")[0]["batch_stats"]

  net = S2STransformer(config)
  decoder_input = teacher_forcing(config, jnp.asarray(targets)).decoder_input

  def loss_fn(params):
    out, updates = net.apply({**variables, "params": params}, inputs, decoder_input, speaker,
                             emotion, deterministic=False, mutable=["batch_stats"])
    log_probs = jax.nn.log_softmax(out)
    nll = -jnp.take_along_axis(log_probs, jnp.asarray(targets)[..., None], axis=-1)
    return jnp.mean(nll), (out, updates["batch_stats"])

  (jax_loss, (jax_logits, stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables["params"])
  assert relative_error(jax_logits, logits.detach().numpy()) < TOL
  assert abs(float(jax_loss) - loss.item()) < 1e-5
  # Gradients that vanish mathematically (key biases: softmax ignores a shift shared by a row's
  # scores) are rounding noise, so each tensor's error is measured against at least 1e-5 of
  # the largest gradient.
  floor = 1e-5 * max(np.max(np.abs(x)) for x in jax.tree.leaves(torch_grads))
  for (path, g), (_, tg) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                jax.tree_util.tree_leaves_with_path(torch_grads)):
    error = np.max(np.abs(np.asarray(g) - tg))
    assert error <= 1e-3 * max(np.max(np.abs(tg)), floor), jax.tree_util.keystr(path)
  for s, ts in zip(jax.tree.leaves(stats), jax.tree.leaves(torch_stats)):
    assert relative_error(s, ts) < TOL


def test_masked_batch_norm_matches_torch_on_valid_frames():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 9, 6)).astype(np.float32) * 2 + 1
  mask = np.arange(9)[None, :] < np.array([[9], [5]])
  bn = torch.nn.BatchNorm1d(6).train()
  expected = bn(torch.as_tensor(x[mask])).detach().numpy()  # [valid frames, C]
  variables = BatchNorm1d().init(jax.random.PRNGKey(0), x, True)
  y, updates = jax.jit(functools.partial(BatchNorm1d().apply, mutable=["batch_stats"]),
                       static_argnums=2)(variables, x, False, mask)
  assert relative_error(np.asarray(y)[mask], expected) < TOL
  assert relative_error(updates["batch_stats"]["mean"], bn.running_mean.numpy()) < TOL
  assert relative_error(updates["batch_stats"]["var"], bn.running_var.numpy()) < TOL


def test_greedy_generation_matches_reference_loop():
  """The original's per-frame loop (KV-cached self-attention; its "cross-attention" sees only
  the current frame) reproduced by the jitted step: same codes and same step logits."""
  model = torch_model(**TINY)
  variables, model_config = convert_s2s_state_dict(numpy_state(model), "original")
  config = S2SConfig.from_dict(model_config)
  inputs, _, speaker, emotion = random_batch(config, 2, 20, 1, seed=4)
  with torch.no_grad():
    torch_codes, torch_logits = model.generate(torch.as_tensor(inputs), torch.as_tensor(speaker),
                                               torch.as_tensor(emotion), 10, temperature=0.0)
  net = S2STransformer(config)
  codes, lengths = generation.generate(net, variables, jnp.asarray(inputs), jnp.asarray(speaker),
                                       jnp.asarray(emotion), generation.Sampling.make(0.0),
                                       jnp.int32(0), max_frames=10)
  np.testing.assert_array_equal(codes, torch_codes.numpy())
  np.testing.assert_array_equal(lengths, [10, 10])
  state = generation.init_state(net, variables, jnp.asarray(inputs), jnp.asarray(speaker),
                                jnp.asarray(emotion), jnp.int32(0), max_frames=10)
  cache, frame, step_logits = state["cache"], jnp.zeros((2, 8), jnp.int32), []
  decode_step = jax.jit(functools.partial(net.apply, method="decode_step"))
  for t in range(10):
    logits, cache = decode_step(variables, frame, cache, jnp.int32(t))
    step_logits.append(logits)
    frame = jnp.asarray(codes[:, :, t])
  assert relative_error(jnp.stack(step_logits, axis=2), torch_logits.numpy()) < TOL


def test_conversion_errors_name_the_key():
  state = numpy_state(torch_model(**TINY))
  variables, _ = convert_s2s_state_dict(state, "original")
  assert variables["batch_stats"]["encoder_layers_1"]["conv"]["norm"]["var"].shape == (128,)

  missing = dict(state)
  del missing["decoder_layers.1.ln2.bias"]
  with pytest.raises(ValueError, match=r"missing key 'decoder_layers\.1\.ln2\.bias'"):
    convert_s2s_state_dict(missing, "original")
  extra = {**state, "encoder_layers.0.extra.weight": np.zeros(3)}
  with pytest.raises(ValueError, match=r"unexpected key 'encoder_layers\.0\.extra\.weight'"):
    convert_s2s_state_dict(extra, "original")
  bad = {**state, "output_heads.3.bias": np.zeros(31, np.float32)}
  with pytest.raises(CheckpointMismatchError, match=r"'output_heads\.3\.bias' has shape \(31,\)"):
    convert_s2s_state_dict(bad, "original")
  bad_rope = {**state, "rope.inv_freq": state["rope.inv_freq"] * 2}
  with pytest.raises(ValueError, match="rope.inv_freq"):
    convert_s2s_state_dict(bad_rope, "original")
  with pytest.raises(ValueError, match="variant"):
    convert_s2s_state_dict(state, "improved")


def test_checkpoint_detection():
  state = numpy_state(torch_model(**TINY))
  assert is_s2s_state_dict(state)
  assert find_s2s_state_dict(state) is state
  wrapped = {"model_state": state, "epoch": 3}
  assert not is_s2s_state_dict(wrapped)
  assert find_s2s_state_dict(wrapped) is state
  assert find_s2s_state_dict({"codec_state_dict": {}}) is None


def test_conversion_to_fixed_variant():
  state = numpy_state(torch_model(**TINY))
  variables, model_config = convert_s2s_state_dict(state, "fixed")
  config = S2SConfig.from_dict(model_config)
  assert config.variant == "fixed" and config.num_outputs == 33 and config.num_embeddings == 35
  params = variables["params"]
  embedding = params["token_embed_2"]["embedding"]
  np.testing.assert_allclose(embedding[:32], state["token_embed.2.weight"])
  np.testing.assert_allclose(embedding[32:], np.repeat(embedding[:32].mean(0, keepdims=True), 3, 0))
  np.testing.assert_allclose(params["output_heads_0"]["bias"][32],
                             state["output_heads.0.bias"].mean(), rtol=1e-6)
  layer = params["encoder_layers_1"]
  assert "layer_scale" not in layer
  for name in ("ffn1_scale", "attn_scale", "conv_scale", "ffn2_scale"):
    np.testing.assert_array_equal(layer[name], state["encoder_layers.1.layer_scale"])
  inputs, targets, speaker, emotion = random_batch(config, 2, 25, 6)
  _, logits = jax_forward(variables, config, inputs, targets, speaker, emotion)
  assert logits.shape == (2, 8, 7, 33) and np.isfinite(logits).all()


def test_converts_torch_tensors_of_any_float_dtype():
  model = torch_model(**TINY)
  half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
          for k, v in model.state_dict().items()}
  from_tensors, _ = convert_s2s_state_dict(half, "original")
  from_numpy, _ = convert_s2s_state_dict(
      {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in half.items()},
      "original")
  jax.tree.map(np.testing.assert_array_equal, from_tensors, from_numpy)


def test_original_training_step_matches_torch_adamw_which_skips_the_unread_encoder():
  """One trainer step of `configs/s2s.py:original` against PyTorch's forward, cross-entropy,
  gradient clipping and AdamW. The encoder gets no gradient (defect 2): PyTorch's AdamW skips it,
  so the trainer must leave it bit for bit, and move everything else as PyTorch does."""
  from configs import s2s as s2s_configs
  from telugu_jax.train import s2s as trainer

  model = torch_model(dropout=0.0, **TINY).train()
  state = numpy_state(model)
  variables, model_config = convert_s2s_state_dict(state, "original")
  config = s2s_configs.get_config("original")
  with config.unlocked():
    config.model.update({**model_config, "dropout": 0.0})
    config.optimizer.warmup_steps = 0  # the peak rate at step 0
  o = config.optimizer
  inputs, targets, speaker, emotion = random_batch(trainer.model_config(config), 2, 30, 11, seed=3)

  optimizer = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                eps=o.eps, weight_decay=o.weight_decay)
  logits, _ = model(*(torch.as_tensor(a) for a in (inputs, targets, speaker, emotion)))
  torch.nn.functional.cross_entropy(logits.flatten(0, 2),
                                    torch.as_tensor(targets).flatten()).backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
  grads = torch_grads_as_params(model, state)
  optimizer.step()
  expected = convert_s2s_state_dict(numpy_state(model), "original")[0]["params"]

  params = variables["params"]
  assert trainer.unreached_by_loss(config, params) == {"encoder_layers_0", "encoder_layers_1",
                                                       "encoder_norm"}
  start = {"params": params, "batch_stats": variables["batch_stats"],
           "opt": trainer.make_optimizer(config, params).init(params),
           "step": jnp.zeros((), jnp.int32)}
  lengths = lambda codes: np.full((codes.shape[0],), codes.shape[-1], np.int32)
  batch = {"question": inputs, "question_lengths": lengths(inputs), "answer": targets,
           "answer_lengths": lengths(targets), "speaker": speaker, "emotion": emotion}
  new, _ = jax.jit(trainer.make_train_step(config, params))(
      start, jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), batch))
  # Adam's first step is about lr * sign(gradient): where the gradient is at the level of
  # rounding noise (key biases, whose gradient vanishes mathematically, see above), its sign,
  # and so the step, is noise. There only the step's bound holds; elsewhere 1e-6 (0.3% of lr).
  noise_level = 1e-3 * max(np.max(np.abs(g)) for g in jax.tree.leaves(grads))
  checked = total = 0
  for name in params:
    for (path, got), want, before, grad in zip(
        jax.tree_util.tree_leaves_with_path(new["params"][name]), jax.tree.leaves(expected[name]),
        jax.tree.leaves(params[name]), jax.tree.leaves(grads[name])):
      where = name + jax.tree_util.keystr(path)
      if name.startswith("encoder_"):
        np.testing.assert_array_equal(want, before, err_msg=where)  # PyTorch skipped it
        np.testing.assert_array_equal(got, before, err_msg=where)
        continue
      tolerance = np.where(np.abs(grad) >= noise_level, 1e-6, 2.1 * o.learning_rate)
      assert np.all(np.abs(np.asarray(got) - want) <= tolerance), where
      assert not np.array_equal(got, before), where
      checked, total = checked + np.sum(np.abs(grad) >= noise_level), total + grad.size
  assert checked > 0.5 * total, (checked, total)  # most weights are held to 1e-6


def test_skip_unread_encoder_changes_nothing_but_the_encoder_statistics():
  """`skip_unread_encoder` drops the original's encoder pass from the train step: with dropout on,
  parameters, optimizer state and metrics equal the full step's, and only the encoder's
  BatchNorm statistics, which the full step moves, stay as they were. The fixed variant, whose
  decoder reads the encoder, refuses it."""
  from configs import s2s as s2s_configs
  from telugu_jax.train import s2s as trainer

  variables, model_config = convert_s2s_state_dict(numpy_state(torch_model(**TINY)), "original")
  params = variables["params"]
  inputs, targets, speaker, emotion = random_batch(S2SConfig.from_dict(model_config), 2, 30, 11,
                                                   seed=4)
  lengths = lambda codes: np.full((codes.shape[0],), codes.shape[-1], np.int32)
  batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), {
      "question": inputs, "question_lengths": lengths(inputs), "answer": targets,
      "answer_lengths": lengths(targets), "speaker": speaker, "emotion": emotion})
  results = {}
  for skip in (False, True):
    config = s2s_configs.get_config("original")
    with config.unlocked():
      config.model.update({**model_config, "dropout": 0.1})
      config.skip_unread_encoder = skip
    start = {"params": params, "batch_stats": variables["batch_stats"],
             "opt": trainer.make_optimizer(config, params).init(params),
             "step": jnp.zeros((), jnp.int32)}
    results[skip] = jax.jit(trainer.make_train_step(config, params))(start, batch)
  (full, full_metrics), (skipped, skipped_metrics) = results[False], results[True]
  for part in ("params", "opt"):  # (atol: the two programs fuse, and so round, differently)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-8),
                 skipped[part], full[part])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6),
               skipped_metrics, full_metrics)
  for name, stats in variables["batch_stats"].items():
    assert name.startswith("encoder_layers"), name
    jax.tree.map(np.testing.assert_array_equal, skipped["batch_stats"][name], stats)
    assert not np.array_equal(full["batch_stats"][name]["conv"]["norm"]["mean"],
                              stats["conv"]["norm"]["mean"]), name

  fixed = s2s_configs.get_config("smoke")
  with fixed.unlocked():
    fixed.skip_unread_encoder = True
  with pytest.raises(ValueError, match="skip_unread_encoder"):
    trainer.make_train_step(fixed, params)
