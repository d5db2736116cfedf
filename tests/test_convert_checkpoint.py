"""Converting an original training checkpoint and continuing it exactly.

A tiny PyTorch reference trains a few real steps and saves in the original format; the converter
CLI turns it into an Orbax checkpoint; JAX's outputs and one more GAN step must equal PyTorch's.
"""

import os

import jax
import numpy as np
import pytest
import torch
from conftest import load_tool, relative_error

import torch_reference as ref
from configs import codec as codec_configs
from telugu_jax import inference
from telugu_jax.train import codec as codec_trainer
from telugu_jax import optim
from test_codec_parity import TINY_CODEC, TINY_DISC, speechlike


convert_tool = load_tool("convert_torch_checkpoint")


class Original:
  """The PyTorch side: tiny models trained three steps (three epochs of one batch)."""

  def __init__(self):
    torch.manual_seed(0)
    self.codec = ref.TeluCodec(**TINY_CODEC)
    self.disc = ref.DACDiscriminator(**TINY_DISC)
    (self.gen_opt, self.disc_opt), scheds = ref.make_optimizers(self.codec, self.disc, num_epochs=8)
    self.audio = torch.from_numpy(speechlike(2, 4000, seed=1))[:, None]
    for _ in range(3):
      ref.train_step(self.codec, self.disc, self.gen_opt, self.disc_opt, self.audio)
      for sched in scheds:
        sched.step()

  def save(self, path, **overrides):
    ref.save_original_checkpoint(path, 2, self.codec, self.disc, self.gen_opt, self.disc_opt,
                                 snr=4.25)
    if overrides:
      checkpoint = torch.load(path, weights_only=True)
      checkpoint.update(overrides)
      torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def original():
  return Original()


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
  folder = tmp_path_factory.mktemp("convert")
  original.save(folder / "best_codec.pt")
  assert convert_tool.main([f"--input={folder / 'best_codec.pt'}",
                            f"--output={folder / 'converted'}"]) == 0
  return str(folder / "converted")


def test_converted_codec_and_discriminator_reproduce_outputs(original, converted):
  codec = inference.load_codec(converted)
  wave = speechlike(2, 5000, seed=2)
  with torch.no_grad():
    original.codec.eval()
    expected_codes = original.codec.encode(torch.from_numpy(wave)[:, None]).numpy()
    expected_decoded = original.codec.decode(torch.from_numpy(expected_codes)).numpy()[:, 0]
    expected_recon = original.codec(torch.from_numpy(wave)[:, None])["audio"].numpy()[:, 0]
    expected_logits = original.disc(torch.from_numpy(wave)[:, None])[0]
  codes = codec.encode(wave)
  np.testing.assert_array_equal(codes, expected_codes)
  assert relative_error(codec.decode(codes), expected_decoded) < 1e-4
  assert relative_error(codec.reconstruct(wave), expected_recon) < 1e-4
  logits, features = inference.load_discriminator(converted)(wave)
  assert len(features) == 8
  for actual, expected in zip(logits, expected_logits):
    assert relative_error(actual, expected.numpy()) < 1e-4


def test_one_more_step_continues_exactly(original, converted, tmp_path):
  config = codec_configs.get_config("smoke")
  state, meta = codec_trainer.load_state(converted, config)
  assert meta["epoch"] == 2 and meta["snr"] == 4.25
  assert int(state["step"]) == 3
  assert float(optim.get_moments(state["gen"]["opt"]).learning_rate) == pytest.approx(
      original.gen_opt.param_groups[0]["lr"])

  # Snapshot PyTorch before and after one more original step.
  before = ref_state(original)
  ref.train_step(original.codec, original.disc, original.gen_opt, original.disc_opt, original.audio)
  after = ref_state(original)
  original.save(tmp_path / "after.pt")
  assert convert_tool.main([f"--input={tmp_path / 'after.pt'}", f"--output={tmp_path / 'after'}"]) == 0
  expected, _ = codec_trainer.load_state(str(tmp_path / "after"), config)
  expected_before, _ = codec_trainer.load_state(converted, config)

  step = jax.jit(codec_trainer.make_train_step(config))
  new_state, metrics = step(state, original.audio.numpy()[:, 0])
  assert np.isfinite(float(metrics["gen_loss"]))
  assert int(new_state["step"]) == 4

  for model in ("gen", "disc"):
    old, new, want = (expected_before[model]["params"], new_state[model]["params"],
                      expected[model]["params"])
    for (path, o), n, w in zip(jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new),
                               jax.tree.leaves(want)):
      # Deltas are known only to float32 rounding of the parameters themselves.
      delta, expected_delta = np.asarray(n) - o, np.asarray(w) - o
      rounding = 4 * np.finfo(np.float32).eps * np.max(np.abs(w))
      assert np.max(np.abs(delta - expected_delta)) <= (
          1e-2 * np.max(np.abs(expected_delta)) + rounding), (model, path)
    actual_moments = optim.get_moments(new_state[model]["opt"])
    expected_moments = optim.get_moments(expected[model]["opt"])
    assert int(actual_moments.count) == int(expected_moments.count) == 4
    for name in ("mu", "nu"):
      for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(getattr(actual_moments, name)),
                              jax.tree.leaves(getattr(expected_moments, name))):
        assert relative_error(a, e) < 1e-3, (model, name, path)
  for name in ("ema_cluster_size", "ema_w"):
    assert relative_error(new_state["gen"]["vq"]["quantizer"][name],
                          after[f"quantizer.{name}"]) < 1e-4, name
  assert relative_error(new_state["gen"]["vq"]["quantizer"]["ema_w"],
                        before["quantizer.ema_w"]) > 1e-4


def ref_state(original):
  return {k: v.detach().numpy().copy() for k, v in original.codec.state_dict().items()}


# --- other input forms ----------------------------------------------------------------------------


def _convert(tmp_path, checkpoint, name="in.pt"):
  torch.save(checkpoint, tmp_path / name)
  output = tmp_path / "out"
  return convert_tool.main([f"--input={tmp_path / name}", f"--output={output}"]), str(output)


@pytest.mark.parametrize("form", ["bare", "codec_only", "float16", "parametrizations"])
def test_other_checkpoint_forms_convert(original, tmp_path, form):
  state = original.codec.state_dict()
  if form == "float16":
    state = {k: v.half() for k, v in state.items()}
  if form == "parametrizations":
    state = {k.replace("weight_g", "parametrizations.weight.original0")
              .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
  checkpoint = {"codec_state_dict": state, "epoch": 7} if form == "codec_only" else state
  code, output = _convert(tmp_path, checkpoint)
  assert code == 0
  codec = inference.load_codec(output)
  wave = speechlike(1, 4000, seed=3)
  with torch.no_grad():
    expected = original.codec.eval().encode(torch.from_numpy(wave)[:, None]).numpy()
  if form != "float16":
    np.testing.assert_array_equal(codec.encode(wave), expected)
  with pytest.raises(ValueError, match="discriminator"):
    inference.load_discriminator(output)


# --- bad input ------------------------------------------------------------------------------------


def _assert_fails(tmp_path, capsys, input_path, *patterns):
  output = tmp_path / "out"
  assert convert_tool.main([f"--input={input_path}", f"--output={output}"]) == 1
  err = capsys.readouterr().err
  for pattern in patterns:
    assert pattern in err, err
  assert not output.exists()
  assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_not_a_torch_file(tmp_path, capsys):
  (tmp_path / "x.pt").write_bytes(b"hello, this is not a checkpoint" * 10)
  _assert_fails(tmp_path, capsys, tmp_path / "x.pt", "not a PyTorch checkpoint")


def test_truncated_file(original, tmp_path, capsys):
  original.save(tmp_path / "full.pt")
  data = (tmp_path / "full.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
  _assert_fails(tmp_path, capsys, tmp_path / "cut.pt", "truncated or corrupted")


def test_other_architectures_name_the_first_bad_key(original, tmp_path, capsys):
  state = original.codec.state_dict()
  missing = {k: v for k, v in state.items() if k != "decoder.final_conv.bias"}
  torch.save({"codec_state_dict": missing}, tmp_path / "missing.pt")
  _assert_fails(tmp_path, capsys, tmp_path / "missing.pt", "missing key 'decoder.final_conv.bias'")
  torch.save({"codec_state_dict": {**state, "decoder.post.weight": torch.zeros(2)}},
             tmp_path / "extra.pt")
  _assert_fails(tmp_path, capsys, tmp_path / "extra.pt", "unexpected key 'decoder.post.weight'")
  torch.save({"codec_state_dict": {**state, "decoder.final_conv.weight": torch.zeros(1, 4, 5)}},
             tmp_path / "shape.pt")
  _assert_fails(tmp_path, capsys, tmp_path / "shape.pt", "'decoder.final_conv.weight' has shape (1, 4, 5)")


def test_mismatched_optimizer_state(original, tmp_path, capsys):
  original.save(tmp_path / "good.pt")
  checkpoint = torch.load(tmp_path / "good.pt", weights_only=True)
  optimizer = checkpoint["gen_optimizer_state_dict"]
  optimizer["state"][5]["exp_avg"] = torch.zeros(3)
  torch.save(checkpoint, tmp_path / "bad.pt")
  _assert_fails(tmp_path, capsys, tmp_path / "bad.pt", "gen_optimizer_state_dict: parameter 5",
                "exp_avg of shape (3,)")
  checkpoint = torch.load(tmp_path / "good.pt", weights_only=True)
  checkpoint["disc_optimizer_state_dict"]["param_groups"][0]["params"].pop()
  torch.save(checkpoint, tmp_path / "short.pt")
  _assert_fails(tmp_path, capsys, tmp_path / "short.pt", "disc_optimizer_state_dict",
                "holds 143 parameters, the model 144")


def test_existing_output_is_not_overwritten(original, converted, capsys):
  path = os.path.join(os.path.dirname(converted), "best_codec.pt")
  assert convert_tool.main([f"--input={path}", f"--output={converted}"]) == 1
  assert "--overwrite" in capsys.readouterr().err
  assert inference.load_codec(converted) is not None


def test_s2s_checkpoints_convert_through_the_cli(tmp_path, capsys):
  from test_s2s_parity import TINY as S2S_TINY
  from test_s2s_parity import random_batch, torch_forward, torch_model

  model = torch_model(**S2S_TINY)
  torch.save({"model_state": model.state_dict(), "epoch": 3}, tmp_path / "s2s.pt")
  assert convert_tool.main([f"--input={tmp_path / 's2s.pt'}", f"--output={tmp_path / 'o'}"]) == 0
  s2s = inference.load_s2s(str(tmp_path / "o"))
  assert s2s.variant == "original"
  inputs, targets, speaker, emotion = random_batch(s2s.config, 2, 21, 9, seed=3)
  expected = torch_forward(model, inputs, targets, speaker, emotion)[1]
  assert relative_error(s2s.logits(inputs, targets, speaker, emotion), expected) < 1e-4
  assert convert_tool.main([f"--input={tmp_path / 's2s.pt'}", f"--output={tmp_path / 'f'}",
                            "--variant=fixed"]) == 0
  assert inference.load_s2s(str(tmp_path / "f")).variant == "fixed"


def test_variant_flag_is_for_s2s_only(original, tmp_path, capsys):
  original.save(tmp_path / "codec.pt")
  _assert_fails_with_args(tmp_path, capsys, [f"--input={tmp_path / 'codec.pt'}", "--variant=fixed"],
                          "--variant applies to S2S checkpoints only")


def _assert_fails_with_args(tmp_path, capsys, args, pattern):
  assert convert_tool.main([*args, f"--output={tmp_path / 'out'}"]) == 1
  assert pattern in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_directory_input_is_named_as_such(tmp_path, capsys):
  (tmp_path / "run").mkdir()
  _assert_fails(tmp_path, capsys, tmp_path / "run",
                f"error: {tmp_path / 'run'}: is a directory; expected a .pt file")
  _assert_fails(tmp_path, capsys, tmp_path / "gone.pt",
                f"error: {tmp_path / 'gone.pt'}: no such file")
