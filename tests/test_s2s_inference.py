"""`load_s2s` over Orbax checkpoints: the variant comes from the metadata, numpy in and out."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import relative_error

from telugu_jax.convert.s2s import convert_s2s_state_dict
from telugu_jax.inference.s2s import load_s2s
from telugu_jax.models.s2s import undelay
from telugu_jax import checkpoints
from test_s2s_generation import teacher_forced_logits
from test_s2s_model import TINY, random_variables
from test_s2s_parity import TINY as TORCH_TINY
from test_s2s_parity import numpy_state, random_batch, torch_forward, torch_model


def save(directory, variables, config_dict, variant):
  checkpoints.save(str(directory), 0, variables,
                     {"task": "s2s", "variant": variant, "model": config_dict})


def test_converted_original_checkpoint(tmp_path):
  model = torch_model(**TORCH_TINY)
  variables, config_dict = convert_s2s_state_dict(numpy_state(model), "original")
  save(tmp_path, variables, config_dict, "original")
  s2s = load_s2s(str(tmp_path))
  assert s2s.variant == "original"
  inputs, targets, speaker, emotion = random_batch(s2s.config, 2, 21, 9, seed=11)
  logits = s2s.logits(inputs, targets, speaker, emotion)
  assert isinstance(logits, np.ndarray) and logits.shape == (2, 8, 9, 32)
  assert relative_error(logits, torch_forward(model, inputs, targets, speaker, emotion)[1]) < 1e-4
  codes, lengths = s2s.generate(inputs, speaker=1, emotion=2, max_frames=5, temperature=0.0)
  assert codes.shape == (2, 8, 5) and codes.dtype == np.int32
  np.testing.assert_array_equal(lengths, [5, 5])
  with torch.no_grad():
    expected, _ = model.generate(torch.as_tensor(inputs), torch.tensor([1, 1]),
                                 torch.tensor([2, 2]), 5, temperature=0.0)
  np.testing.assert_array_equal(codes, expected.numpy())


def test_fixed_checkpoint(tmp_path):
  model, variables = random_variables(TINY, seed=4)
  save(tmp_path, variables, TINY.to_dict(), "fixed")
  s2s = load_s2s(str(tmp_path))
  assert s2s.variant == "fixed" and s2s.config == TINY
  rng = np.random.default_rng(12)
  inputs = rng.integers(0, 32, (2, 8, 13))
  targets = rng.integers(0, 32, (2, 8, 6))
  logits = s2s.logits(inputs, targets, speaker=0, emotion=0)
  assert logits.shape == (2, 8, 6, 33)  # 32 codes and end-of-speech
  delayed = teacher_forced_logits(model, variables, jnp.asarray(inputs), jnp.asarray(targets))
  np.testing.assert_allclose(logits, undelay(delayed, TINY.level_delays)[:, :, :6], atol=1e-5)

  codes, lengths = s2s.generate(inputs, 0, 0, max_frames=8, top_k=10, seed=3)
  frames = list(s2s.stream(inputs, 0, 0, max_frames=8, top_k=10, seed=3))
  assert codes.shape == (2, 8, max(lengths)) and len(frames) == max(lengths)
  np.testing.assert_array_equal(np.stack(frames, -1), codes)



def test_rejects_other_checkpoints(tmp_path):
  checkpoints.save(str(tmp_path), 0, {"params": {}}, {"task": "codec"})
  with pytest.raises(ValueError, match="not an S2S checkpoint"):
    load_s2s(str(tmp_path))
