"""The codec trainer: resume after SIGKILL, SIGTERM, NaN stop, 1 device vs 2 hosts × 4 devices.

Runs use a tiny variant of `configs/codec.py:smoke` (a codec of 2 down/upsampling blocks, 2 VQ
levels, 2 period + 1 STFT discriminators) so that each launch compiles in seconds; launched
processes share the session's compilation cache (see conftest.py).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from conftest import ROOT

from configs import codec as codec_configs
from telugu_jax import checkpoints, inference, optim
from telugu_jax.data import pipelines
from telugu_jax.data.sample_corpus import CORPUS_DIR
from telugu_jax.evaluation import quality
from telugu_jax.train import codec as trainer

TINY = {
    "codec.strides": (4, 5), "codec.encoder_channels": (4, 8), "codec.decoder_channels": (8, 4, 4),
    "discriminator.periods": (2, 3), "discriminator.n_ffts": (256,),
    "discriminator.period_channels": (2, 2, 2, 2, 2), "discriminator.stft_channels": 2,
    "codec.num_quantizers": 2, "data.batch_size": 4, "data.crop_samples": 2000,
    "eval_crop_samples": 4000, "eval_batches": 1, "log_every": 1, "eval_every": 0,
    "data.eval_folder": "",
}


def tiny_config(**overrides):
  config = codec_configs.get_config("smoke")
  with config.unlocked():
    for key, value in {**TINY, **overrides}.items():
      *parents, name = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[name] = value
  return config


def _flag(value):
  return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def launch(workdir, env=None, extra=(), **overrides):
  """Starts `python -m telugu_jax.main` on the tiny config in a subprocess."""
  flags = [f"--config.{k}={_flag(v)}" for k, v in {**TINY, **overrides}.items()]
  return subprocess.Popen(
      [sys.executable, "-m", "telugu_jax.main", "--config=configs/codec.py:smoke",
       f"--workdir={workdir}", *flags, *extra],
      cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def final_params(workdir):
  state, _ = trainer.load_state(str(workdir), tiny_config())
  return state["gen"]["params"], state["disc"]["params"]


def assert_same_params(a, b, rtol=0.0, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def signal_at(process, prefix, signum):
  """Sends `signum` to `process` once it prints a line starting with `prefix`; the thread's
  `output` list collects everything it printed."""
  output = []

  def watch():
    sent = False
    for line in process.stdout:
      output.append(line)
      if not sent and line.startswith(prefix):
        process.send_signal(signum)
        sent = True

  thread = threading.Thread(target=watch, daemon=True)
  thread.output = output
  thread.start()
  return thread


def test_sigkill_resume_loses_nothing_and_sigterm_saves(tmp_path):
  # Every checkpoint falls on an epoch boundary, where the learning rate changes: the resumed
  # run must train the next epoch at its own rate (it once kept the previous epoch's).
  total, epochs = 16, {"steps_per_epoch": 2, "num_epochs": 10}
  # The reference trains here first; the launched runs then read its compiled programs from the
  # session's compilation cache, and are signalled early in their training by threads that
  # read their output.
  trainer.train_and_evaluate(tiny_config(total_steps=total, checkpoint_every=2, **epochs),
                             str(tmp_path / "reference"))
  stopped = launch(tmp_path / "stopped", total_steps=1000, checkpoint_every=1000, **epochs)
  stopping = signal_at(stopped, "step 2/", signal.SIGTERM)
  killed = launch(tmp_path / "killed", total_steps=1000, checkpoint_every=2, **epochs)
  # SIGKILL, no chance to clean up: step 4's save waits for step 2's, so step 2 is on disk.
  killing = signal_at(killed, "step 5/", signal.SIGKILL)

  killed.wait(timeout=300)
  killing.join()
  assert killed.returncode == -signal.SIGKILL, "".join(killing.output)
  latest = checkpoints.latest_step(str(tmp_path / "killed" / "checkpoints"))
  assert latest is not None and 2 <= latest < total, latest
  trainer.train_and_evaluate(tiny_config(total_steps=total, checkpoint_every=2, **epochs),
                             str(tmp_path / "killed"))
  assert_same_params(final_params(tmp_path / "killed"), final_params(tmp_path / "reference"))
  # metrics.jsonl reads as one history: the killed run's rows after its checkpoint are gone.
  rows = read_metrics(tmp_path / "killed")
  assert [row["step"] for row in rows] == list(range(1, total + 1))
  reference = read_metrics(tmp_path / "reference")
  rates = [row["train/learning_rate"] for row in rows]
  assert rates == [row["train/learning_rate"] for row in reference] and len(set(rates)) > 4

  stopped.wait(timeout=300)
  stopping.join()
  assert stopped.returncode == 0, "".join(stopping.output)
  latest = checkpoints.latest_step(str(tmp_path / "stopped" / "checkpoints"))
  assert latest is not None and 2 <= latest < 1000


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), workdir)
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss at step 3 .* last good checkpoint is step 2"):
    trainer.train_and_evaluate(
        tiny_config(total_steps=6, checkpoint_every=1, **{"loss_weights.l1": float("nan")}),
        workdir)
  assert checkpoints.latest_step(os.path.join(workdir, "checkpoints")) == 2
  state, _ = trainer.load_state(workdir, tiny_config())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["gen"]["params"]))


def test_one_device_and_two_hosts_of_four_devices_train_alike(tmp_path):
  """The same run on 1 device and on 8: 2 processes × 4 devices (gloo), data-parallel."""
  steps = {"total_steps": 3, "checkpoint_every": 3, "eval_every": 3, "data.batch_size": 8}
  # All at once: compilation is mostly single-threaded, so the runs share the cores.
  port = 20000 + os.getpid() % 20000
  devices = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4"
  hosts = [launch(tmp_path / "hosts", env={"XLA_FLAGS": devices},
                  extra=["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                         "--num_processes=2", f"--process_id={process_id}"], **steps)
           for process_id in range(2)]
  trainer.train_and_evaluate(tiny_config(**steps), str(tmp_path / "one"))
  for process in hosts:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    assert "on 8 devices, 2 processes" in output, output

  reference = read_metrics(tmp_path / "one")
  assert [r["step"] for r in reference] == [1, 2, 3, 3]
  records = read_metrics(tmp_path / "hosts")
  assert [r["step"] for r in records] == [r["step"] for r in reference]
  for a, b in zip(reference, records):
    for key in ("gen_loss", "disc_loss", "vq", "feature_matching", "val/snr", "val/mel_distance"):
      if key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
  # A checkpoint written by 2 hosts on 8 devices restores here, on 1 device.
  assert_same_params(final_params(tmp_path / "hosts"), final_params(tmp_path / "one"),
                     rtol=1e-4, atol=1e-6)


def test_reseed_codes_replaces_only_dead_rows():
  rng = jax.random.key(0)
  ema = {"ema_cluster_size": np.array([[5.0, 0.001, 2.0]]),
         "ema_w": np.ones((1, 3, 2)), "codebooks": np.full((1, 3, 2), 7.0)}
  residuals = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2) + 100
  out = trainer.reseed_codes(rng, ema, residuals, threshold=0.01, reseed_all=False)
  np.testing.assert_array_equal(out["codebooks"][0, [0, 2]], 7.0)
  candidates = {tuple(v) for v in residuals.reshape(-1, 2)}
  assert tuple(np.asarray(out["codebooks"][0, 1])) in candidates
  np.testing.assert_array_equal(out["ema_w"][0, 1], out["codebooks"][0, 1])
  np.testing.assert_array_equal(out["ema_cluster_size"], [[5.0, 1.0, 2.0]])
  everything = trainer.reseed_codes(rng, ema, residuals, threshold=0.0, reseed_all=True)
  assert all(tuple(v) in candidates for v in np.asarray(everything["codebooks"][0]))
  # A lighter re-seed: count 0.2 and EMA sum 0.2 x the vector, so the EMA codebook (sum / count)
  # is still the vector.
  light = trainer.reseed_codes(rng, ema, residuals, threshold=0.01, reseed_all=False, count=0.2)
  np.testing.assert_allclose(light["ema_cluster_size"], [[5.0, 0.2, 2.0]], rtol=1e-7)
  np.testing.assert_allclose(light["ema_w"][0, 1], 0.2 * np.asarray(light["codebooks"][0, 1]))
  np.testing.assert_array_equal(light["codebooks"], out["codebooks"])


def test_reseed_split_moves_the_picked_residuals_code_toward_it():
  rng = jax.random.key(3)
  codebooks = np.array([[[0.0, 0.0], [10.0, 10.0], [-4.0, 8.0]],
                        [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]], np.float32)  # [n_q=2, K=3, D=2]
  ema = {"ema_cluster_size": np.array([[5.0, 0.001, 2.0], [0.001, 3.0, 3.0]]),
         "ema_w": codebooks.copy(), "codebooks": codebooks}
  residuals = np.random.default_rng(0).normal(size=(2, 2, 3, 2)).astype(np.float32)  # [n_q,B,T,D]
  codes = np.array([[[0, 2, 0], [2, 2, 0]], [[1, 2, 1], [2, 1, 2]]])  # [B, n_q, T]
  out = trainer.reseed_codes(rng, ema, residuals, threshold=0.01, reseed_all=False,
                             count=0.2, split=0.25, codes=codes)
  # Every allowed value, by hand: the residual at (b, t) of level q and the row it picked.
  for q, dead_row in ((0, 1), (1, 0)):
    allowed = [codebooks[q, codes[b, q, t]]
               + 0.25 * (residuals[q, b, t] - codebooks[q, codes[b, q, t]])
               for b in range(2) for t in range(3)]
    got = np.asarray(out["codebooks"][q, dead_row])
    assert min(np.abs(got - a).max() for a in allowed) < 1e-6, (q, got)
    np.testing.assert_allclose(out["ema_w"][q, dead_row], 0.2 * got, rtol=1e-6)
  np.testing.assert_array_equal(out["codebooks"][0, [0, 2]], codebooks[0, [0, 2]])
  np.testing.assert_array_equal(out["codebooks"][1, [1, 2]], codebooks[1, [1, 2]])
  # From level 1 on only: level 0's dead row becomes the residual itself, level 1's still splits.
  deep = trainer.reseed_codes(rng, ema, residuals, threshold=0.01, reseed_all=False,
                              count=0.2, split=0.25, codes=codes, split_from_level=1)
  assert tuple(np.asarray(deep["codebooks"][0, 1])) in {tuple(v) for v in
                                                        residuals[0].reshape(-1, 2)}
  np.testing.assert_array_equal(deep["codebooks"][1], out["codebooks"][1])
  # The initialisation from data ignores the split: every row is a residual vector.
  everything = trainer.reseed_codes(rng, ema, residuals, threshold=0.0, reseed_all=True,
                                    split=0.25, codes=codes)
  for q in range(2):
    candidates = {tuple(v) for v in residuals[q].reshape(-1, 2)}
    assert all(tuple(v) in candidates for v in np.asarray(everything["codebooks"][q]))


def test_correct_polarity_negates_the_output_of_an_upside_down_decoder_only():
  config = tiny_config(correct_polarity=True)
  codec, _ = trainer.build_models(config)
  state = trainer.init_state(config, jax.random.key(0))
  moments = optim.get_moments(state["gen"]["opt"])
  mu = jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), state["gen"]["params"])
  gen = {**state["gen"], "opt": optim.set_moments(state["gen"]["opt"], moments._replace(mu=mu))}
  audio = np.random.default_rng(0).standard_normal((2, 2000)).astype(np.float32) * 0.1

  def reconstruct(g):
    return np.asarray(codec.apply({"params": g["params"], "vq": g["vq"]}, audio)["audio"])

  flipped_gen, flipped = trainer.correct_polarity(gen, audio, -audio)
  assert bool(flipped)
  np.testing.assert_allclose(reconstruct(flipped_gen), -reconstruct(gen), atol=1e-6)
  new = optim.get_moments(flipped_gen["opt"])
  expected_mu = {**mu, "decoder": {**mu["decoder"], "final_conv": jax.tree.map(
      lambda m: -m, mu["decoder"]["final_conv"])}}
  for a, b in zip(jax.tree.leaves(new.mu), jax.tree.leaves(expected_mu)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(new.nu), jax.tree.leaves(moments.nu)):
    np.testing.assert_array_equal(a, b)
  # A right-way-up or barely anti-correlated (-0.05) reconstruction is left alone.
  noise = np.random.default_rng(1).standard_normal(audio.shape).astype(np.float32) * 0.1
  for recon in (audio, -0.05 * audio + noise):
    same_gen, flipped = trainer.correct_polarity(gen, audio, recon)
    assert not bool(flipped)
    for a, b in zip(jax.tree.leaves(same_gen), jax.tree.leaves(gen)):
      np.testing.assert_array_equal(a, b)


def test_jitted_train_step_negates_the_updated_decoder_output(monkeypatch):
  # Any correlation is below 2: every batch counts as upside down, so the compiled step must flip.
  monkeypatch.setattr(trainer, "POLARITY_FLIP_CORRELATION", 2.0)
  audio = np.random.default_rng(2).standard_normal((2, 2000)).astype(np.float32) * 0.1
  after = {}
  for correct in (False, True):
    config = tiny_config(correct_polarity=correct)
    state = trainer.init_state(config, jax.random.key(0))
    after[correct] = jax.jit(trainer.make_train_step(config, adversarial=False))(state, audio)[0]

  def leaves(gen):
    moments = optim.get_moments(gen["opt"])
    return jax.tree_util.tree_leaves_with_path(
        {"params": gen["params"], "mu": moments.mu, "nu": moments.nu, "vq": gen["vq"]})

  negated = 0
  for (path, got), (_, plain) in zip(leaves(after[True]["gen"]), leaves(after[False]["gen"]),
                                     strict=True):
    where = jax.tree_util.keystr(path)
    # Only the final conv's parameters and Adam first moments change sign.
    sign = -1.0 if "final_conv" in where and not where.startswith("['nu']") else 1.0
    negated += sign < 0
    # The two programs differ, and so does their rounding (up to 7e-6 relative in the moments).
    np.testing.assert_allclose(got, sign * plain, rtol=3e-5, atol=1e-9, err_msg=where)
  assert negated == 4, negated  # kernel and bias, parameters and first moments


def test_reseed_count_below_the_threshold_is_refused():
  with pytest.raises(ValueError, match="reseed_count"):
    trainer.build_models(tiny_config(**{"vq.dead_code_threshold": 0.1, "vq.reseed_count": 0.05}))
  # Equal is the demo's setting (threshold 1.0, count 1.0): re-seeded after one unused step.
  trainer.build_models(tiny_config(**{"vq.dead_code_threshold": 1.0, "vq.reseed_count": 1.0}))


def test_bfloat16_compute_trains_close_to_float32():
  audio = np.random.default_rng(1).standard_normal((4, 2000)).astype(np.float32) * 0.1
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(compute_dtype=dtype)
    state = trainer.init_state(config, jax.random.key(0))
    _, metrics = jax.jit(trainer.make_train_step(config))(state, audio)
    losses[dtype] = float(metrics["gen_loss"])
  assert np.isfinite(losses["bfloat16"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_evaluation_scores_the_real_speech_clips_with_pesq_and_stoi(tmp_path):
  clips = tmp_path / "clips"
  clips.mkdir()
  for voice, index in (("f2", 21), ("m1", 0)):
    name = f"espeak_te_{voice}_{index:03d}.flac"
    shutil.copy(os.path.join(CORPUS_DIR, f"espeak_te_{voice}", name), clips)
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(
      tiny_config(total_steps=1, eval_every=1, **{"data.eval_folder": str(clips)}), str(workdir))
  row = read_metrics(workdir)[-1]

  codec = inference.load_codec(str(workdir))
  scores = [quality.quick_quality(wave, codec.reconstruct(wave)[0])
            for _, wave in pipelines.folder_eval_clips(clips, normalize=True)]
  assert len(scores) == 2
  for key, tolerance in (("pesq", 0.01), ("stoi", 1e-3)):
    expected = np.mean([score[key] for score in scores])
    assert row[f"real/{key}"] == pytest.approx(expected, abs=tolerance), key
  # The reconstruction was scored, not the reference against itself (PESQ 4.64, STOI 1).
  assert row["real/pesq"] < 4 and row["real/stoi"] < 0.99
