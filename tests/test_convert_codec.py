"""State-dict → Flax mapping: key styles, dtypes and clear errors on mismatches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import torch_reference as ref
from telugu_jax.convert import codec as convert
from telugu_jax.models.codec import Codec
from telugu_jax.models.discriminators import Discriminator

TINY = dict(encoder_channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 8, 4, 4), hidden_dim=16,
            codebook_size=32)


@pytest.fixture(scope="module")
def tiny():
  torch.manual_seed(0)
  module = ref.TeluCodec(**TINY)
  state = {k: v.numpy().copy() for k, v in module.state_dict().items()}
  abstract = jax.eval_shape(lambda: Codec(**TINY).init(jax.random.key(0), jnp.zeros((1, 400))))
  return state, abstract


def test_every_key_round_trips(tiny):
  state, abstract = tiny
  variables = convert.from_torch(state, abstract)
  flat = traverse_util.flatten_dict(variables)
  assert len(flat) == len(state) == 121
  for key, value in state.items():
    path = convert.flax_path(key)
    assert convert.to_torch_key(path) == key
    np.testing.assert_array_equal(flat[path].reshape(value.shape), value)
  np.testing.assert_array_equal(variables["params"]["encoder"]["encoder_1"]["snake1"]["alpha"],
                                state["encoder.encoder.1.snake1.alpha"].reshape(-1))
  np.testing.assert_array_equal(variables["params"]["decoder"]["decoder_3"]["norm2"]["scale"],
                                state["decoder.decoder.3.norm2.weight"])
  np.testing.assert_array_equal(variables["vq"]["quantizer"]["ema_w"], state["quantizer.ema_w"])


def test_new_parametrization_keys_and_float16_are_accepted(tiny):
  state, abstract = tiny
  renamed = {}
  for key, value in state.items():
    key = key.replace("weight_g", "parametrizations.weight.original0")
    key = key.replace("weight_v", "parametrizations.weight.original1")
    renamed[key] = value.astype(np.float16)
  variables = convert.from_torch(renamed, abstract)
  v = variables["params"]["encoder"]["proj"]["weight_v"]
  assert v.dtype == np.float32
  np.testing.assert_array_equal(v, state["encoder.proj.weight_v"].astype(np.float16).astype(np.float32))


def test_missing_extra_and_misshaped_keys_are_named(tiny):
  state, abstract = tiny
  missing = dict(state)
  del missing["decoder.final_conv.bias"]
  with pytest.raises(convert.CheckpointMismatchError, match=r"missing key 'decoder.final_conv.bias'"):
    convert.from_torch(missing, abstract)
  extra = {**state, "decoder.extra.weight": np.zeros(3)}
  with pytest.raises(convert.CheckpointMismatchError, match=r"unexpected key 'decoder.extra.weight'"):
    convert.from_torch(extra, abstract)
  misshaped = {**state, "quantizer.codebooks": np.zeros((8, 32, 15), np.float32)}
  with pytest.raises(convert.CheckpointMismatchError,
                     match=r"'quantizer.codebooks' has shape \(8, 32, 15\), the model expects \(8, 32, 16\)"):
    convert.from_torch(misshaped, abstract)


def test_discriminator_window_buffers_are_checked_and_dropped():
  torch.manual_seed(0)
  module = ref.DACDiscriminator(period_channels=(2, 2, 2, 2, 2), stft_channels=2)
  state = {k: v.numpy().copy() for k, v in module.state_dict().items()}
  model = Discriminator(period_channels=(2, 2, 2, 2, 2), stft_channels=2)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3000))))
  variables = convert.from_torch(state, abstract)
  assert len(jax.tree.leaves(variables)) == len(state) - 3 == 144
  state["msd.discriminators.1.window"] = np.ones_like(state["msd.discriminators.1.window"])
  with pytest.raises(convert.CheckpointMismatchError, match="msd.discriminators.1.window"):
    convert.from_torch(state, abstract)
