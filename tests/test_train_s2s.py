"""The S2S trainer: its loss, that it learns a mapping only cross-attention can carry, exact
resume after SIGKILL, the style stage's frozen parts, gradient accumulation, bad input."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import ROOT, TEST_XLA_FLAGS, with_overrides

from configs import codec as codec_configs
from configs import s2s as s2s_configs
from telugu_jax import checkpoints, inference, losses
from telugu_jax.data import records
from telugu_jax.train import codec as codec_trainer
from telugu_jax.train import s2s as trainer

VOCAB = 16


# The smoke model with 2 levels of 16 codes, on pair shards.
PAIRS = {"stage": "conversation", "model.vocab_size": VOCAB, "model.num_quantizers": 2,
         "model.delays": (0, 1), "data.max_question_frames": 8, "data.max_answer_frames": 8,
         "data.bucket_frames": 8, "data.batch_size": 32}


def pair_config(train, validation, **overrides):
  return with_overrides(s2s_configs.get_config("smoke"), **{
      **PAIRS, "data.train_shards": train, "data.validation_shards": validation, **overrides})


def _flag(value):
  return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def reversal_pairs(count, seed, levels=2):
  """Random questions of 4-8 frames; the answer is the question reversed in time."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(count):
    question = rng.integers(0, VOCAB, (levels, int(rng.integers(4, 9))))
    pairs.append({"question": question, "answer": question[:, ::-1], "speaker_id": 1,
                  "emotion_id": 2})
  return pairs


def test_masked_cross_entropy_against_pytorch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 3, 5))
  loss, sums = losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                           jnp.ones((2, 3, 5)))
  # The original's objective: the mean over levels of F.cross_entropy.
  expected = np.mean([torch.nn.functional.cross_entropy(
      torch.from_numpy(logits[:, q]).reshape(-1, 7), torch.from_numpy(targets[:, q]).reshape(-1))
      .item() for q in range(3)])
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  np.testing.assert_array_equal(sums["count"], [10, 10, 10])
  np.testing.assert_array_equal(sums["correct"],
                                np.sum(logits.argmax(-1) == targets, axis=(0, 2)))

  # Masked positions, label smoothing and level weights, against PyTorch's own smoothing.
  weights = (rng.random((2, 3, 5)) > 0.4).astype(np.float32)
  level_weights = (1.0, 2.0, 0.5)
  loss, _ = losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                        jnp.asarray(weights), 0.1, level_weights)
  per_level = []
  for q in range(3):
    keep = torch.from_numpy(weights[:, q].reshape(-1) > 0)
    per_level.append(torch.nn.functional.cross_entropy(
        torch.from_numpy(logits[:, q]).reshape(-1, 7)[keep],
        torch.from_numpy(targets[:, q]).reshape(-1)[keep], label_smoothing=0.1).item())
  assert float(loss) == pytest.approx(np.average(per_level, weights=level_weights), rel=1e-5)

  # The answer's first frames weighted up: a weighted mean of PyTorch's per-position losses.
  config = with_overrides(s2s_configs.get_config("smoke"),
                          **{"loss.answer_start_frames": 2, "loss.answer_start_weight": 3.0})
  emphasis = trainer.answer_start_emphasis(config, 5)
  np.testing.assert_array_equal(emphasis, [3, 3, 1, 1, 1])
  loss, emphasised_sums = losses.masked_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
      position_weights=emphasis)
  per_level = []
  for q in range(3):
    nll = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:, q]).reshape(-1, 7),
                                            torch.from_numpy(targets[:, q]).reshape(-1),
                                            reduction="none").numpy()
    w = (weights[:, q] * np.asarray(emphasis)).reshape(-1)
    per_level.append(np.sum(nll * w) / np.sum(w))
  assert float(loss) == pytest.approx(np.mean(per_level), rel=1e-5)
  np.testing.assert_array_equal(emphasised_sums["count"], weights.sum(axis=(0, 2)))
  assert trainer.answer_start_emphasis(s2s_configs.get_config("smoke"), 5) is None


def test_decoder_input_noise_replaces_only_codes_at_the_given_rate():
  c = trainer.model_config(s2s_configs.get_config("smoke"))
  codes = jnp.asarray(np.random.default_rng(0).integers(0, c.vocab_size, (4, 8, 500)))
  forcing = trainer.teacher_forcing(c, codes, jnp.array([500, 400, 100, 1]))
  special = np.asarray(forcing.decoder_input >= c.vocab_size)
  assert special.any() and (~special).any()
  rng = jax.random.key(3)
  np.testing.assert_array_equal(trainer.corrupt_codes(rng, forcing.decoder_input, 0.0,
                                                      c.vocab_size), forcing.decoder_input)
  for fraction in (0.3, 1.0):
    noisy = np.asarray(trainer.corrupt_codes(rng, forcing.decoder_input, fraction, c.vocab_size))
    np.testing.assert_array_equal(noisy[special], np.asarray(forcing.decoder_input)[special])
    assert noisy[~special].min() >= 0 and noisy[~special].max() < c.vocab_size
    changed = (noisy != np.asarray(forcing.decoder_input))[~special].mean()
    # A replacement draws the same code again with probability 1 / vocab_size.
    assert changed == pytest.approx(fraction * (1 - 1 / c.vocab_size), abs=0.01)

  # Blanked examples: every code replaced (the specials stay), the other examples untouched.
  many = jnp.asarray(np.random.default_rng(1).integers(0, c.vocab_size, (400, 8, 30)))
  blanked = np.asarray(trainer.corrupt_codes(rng, many, 0.0, c.vocab_size, blank_fraction=0.25))
  changed = (blanked != np.asarray(many)).mean(axis=(1, 2))
  untouched = changed == 0
  assert 0.18 < 1 - untouched.mean() < 0.32
  assert changed[~untouched].min() > 1 - 3 / c.vocab_size - 0.1  # all replaced, some by themselves


def test_learns_to_answer_with_the_reversed_question(tmp_path):
  """An answer that is the question backwards: every frame must be read from the encoder
  through cross-attention, at a position that depends on the question's length. Greedy
  decoding of held-out questions must give the exact answer, end-of-speech included (it fails
  with cross-attention disabled, causal masking off, the delay pattern misapplied, or the
  end-of-speech target removed)."""
  data = str(tmp_path / "data")
  train = records.write_code_shards(reversal_pairs(4000, 0), data, split="train")
  held_out = reversal_pairs(32, 1)
  validation = records.write_code_shards(held_out, data, split="validation")
  settings = {**PAIRS, "data.train_shards": train[0], "data.validation_shards": validation[0],
              "total_steps": 600, "log_every": 100, "eval_every": 600, "checkpoint_every": 600,
              "optimizer.warmup_steps": 20}
  # Hundreds of small steps: launched with XLA's full optimisation, they run 3x faster than
  # with the suite's quick-to-compile flags (conftest.py).
  run = subprocess.run(
      [sys.executable, "-m", "telugu_jax.main", "--config=configs/s2s.py:smoke",
       f"--workdir={tmp_path / 'run'}", *(f"--config.{key}={_flag(value)}"
                                          for key, value in settings.items())],
      cwd=ROOT, env={**os.environ, "XLA_FLAGS": " ".join(
          os.environ["XLA_FLAGS"].replace(TEST_XLA_FLAGS, "").split())},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
  assert run.returncode == 0, run.stdout
  results = _rows(tmp_path / "run")[-1]
  assert results["val/accuracy"] > 0.99 and results.get("val/eos_accuracy") == 1.0, results

  model = inference.load_s2s(str(tmp_path / "run"))  # a training workdir loads like a conversion
  pad = model.config.pad_id
  questions = np.full((len(held_out), 2, 8), pad, np.int32)
  for row, pair in enumerate(held_out):
    questions[row, :, :pair["question"].shape[1]] = pair["question"]
  codes, lengths = model.generate(questions, 1, 2, max_frames=12, temperature=0.0)
  for row, pair in enumerate(held_out):
    np.testing.assert_array_equal(codes[row, :, :lengths[row]], pair["answer"], err_msg=str(row))


def test_style_stage_trains_only_style_and_last_layers_and_accumulation_averages(tmp_path):
  data = str(tmp_path / "data")
  train = records.write_code_shards(reversal_pairs(8, 0), data, split="train")
  config = pair_config(train[0], "", **{"trainable.parts": "style",
                                        "trainable.last_decoder_layers": 1,
                                        "optimizer.warmup_steps": 0})
  state = trainer.init_state(config, jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in _batch(reversal_pairs(4, 3)).items()}
  new, metrics = jax.jit(trainer.make_train_step(config, state["params"]))(
      jax.tree.map(jnp.copy, state), batch)
  assert np.isfinite(float(metrics["loss"]))
  changed = {name for name in state["params"]
             if any(not np.array_equal(a, b) for a, b in zip(
                 jax.tree.leaves(state["params"][name]), jax.tree.leaves(new["params"][name])))}
  assert changed == {"style_embed", "decoder_layers_1"}
  for a, b in zip(jax.tree.leaves(state["batch_stats"]), jax.tree.leaves(new["batch_stats"])):
    np.testing.assert_array_equal(a, b)

  # Two micro-batches of the same batch with accumulation equal one step on it (dropout off).
  # The two programs round differently, and Adam turns rounding noise in gradients that are
  # zero in exact arithmetic (the key projection's bias) into lr-sized updates: a large eps.
  adam = {"optimizer.warmup_steps": 0, "optimizer.eps": 1e-3}
  plain = pair_config(train[0], "", **adam)
  accumulated = pair_config(train[0], "", **{"optimizer.accumulate_steps": 2, "total_steps": 12,
                                             **adam})
  one = jax.jit(trainer.make_train_step(plain, state["params"]))
  two = jax.jit(trainer.make_train_step(accumulated, state["params"]))

  def fresh(config):  # init_state(config, key 0) without compiling it again
    return {**state, "opt": trainer.make_optimizer(config, state["params"]).init(state["params"])}

  expected, _ = one(fresh(plain), batch)
  got, _ = two(fresh(accumulated), batch)
  for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)  # nothing applied after the first micro-batch
  got, _ = two(got, batch)
  for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(expected["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _batch(pairs, width=8):
  pad = 16 + 2
  out = {"question": np.full((len(pairs), 2, width), pad, np.int32),
         "answer": np.full((len(pairs), 2, width), pad, np.int32)}
  for row, pair in enumerate(pairs):
    out["question"][row, :, :pair["question"].shape[1]] = pair["question"]
    out["answer"][row, :, :pair["answer"].shape[1]] = pair["answer"]
  out["question_lengths"] = np.array([p["question"].shape[1] for p in pairs], np.int32)
  out["answer_lengths"] = np.array([p["answer"].shape[1] for p in pairs], np.int32)
  out["speaker"] = np.ones(len(pairs), np.int32)
  out["emotion"] = np.full(len(pairs), 2, np.int32)
  return out


# One uninterrupted run of the smoke stage 1 on one device, trained in this process: the
# reference of the SIGKILL test and of the 2-host test. Adam's normalisation turns the last-bit
# differences of gradients summed in another order (8 devices) into lr-sized updates of
# near-zero gradients: a large eps lets the 2-host run compare closely (the data-parallel math is
# what it tests).
RUN = {"total_steps": 8, "checkpoint_every": 2, "eval_every": 8, "log_every": 1,
       "optimizer.eps": 1e-3}


def smoke_run_config():
  return with_overrides(s2s_configs.get_config("smoke"), **RUN)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  trainer.train_and_evaluate(smoke_run_config(), str(workdir))
  return workdir


def _launch(workdir, *extra, env=None):
  """`python -m telugu_jax.main` on the smoke config with `RUN`'s settings."""
  flags = [f"--config.{key}={_flag(value)}" for key, value in RUN.items()]
  return subprocess.Popen(
      [sys.executable, "-m", "telugu_jax.main", "--config=configs/s2s.py:smoke",
       f"--workdir={workdir}", *flags, *extra], cwd=ROOT, env={**os.environ, **(env or {})},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_sigkill_resume_gives_the_batches_and_parameters_of_an_uninterrupted_run(
    tmp_path, uninterrupted, capsys):
  # The launched run reads the uninterrupted run's compiled programs from the session's
  # compilation cache.
  killed = _launch(tmp_path / "killed")
  for line in killed.stdout:  # step 4's save waits for step 2's: step 2 is on disk by step 5
    if line.startswith("step 5/"):
      break
  killed.kill()  # SIGKILL: no chance to clean up
  killed.wait()
  latest = checkpoints.latest_step(str(tmp_path / "killed" / "checkpoints"))
  assert latest is not None and 2 <= latest < RUN["total_steps"], latest
  trainer.train_and_evaluate(smoke_run_config(), str(tmp_path / "killed"))
  assert "resumed from" in capsys.readouterr().out

  killed_rows, reference_rows = _rows(tmp_path / "killed"), _rows(uninterrupted)
  assert [r["step"] for r in killed_rows] == [*range(1, RUN["total_steps"] + 1),
                                              RUN["total_steps"]]

  def measured(row):  # all but the clock
    return {k: v for k, v in row.items() if k != "wall_time" and not k.endswith("per_second")}

  assert [measured(r) for r in killed_rows] == [measured(r) for r in reference_rows]
  a, b = (inference.load_s2s(str(workdir)).variables for workdir in
          (tmp_path / "killed", uninterrupted))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def zeros_like(shapes):
  """Arrays of zeros for checkpoints whose metadata is what a test reads."""
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def test_bad_input_is_named_before_any_step(tmp_path):
  data = tmp_path / "data"
  good = records.write_code_shards(reversal_pairs(8, 0), data / "good", split="train")[0]
  three_levels = records.write_code_shards(reversal_pairs(8, 0, levels=3), data / "levels",
                                           split="train")[0]
  too_big = records.write_code_shards(
      [{"question": np.full((2, 5), VOCAB), "answer": np.zeros((2, 5), int)}], data / "vocab",
      split="train")[0]
  utterances = records.write_code_shards([{"codes": np.zeros((2, 9), int)}], data / "codes",
                                         split="train")[0]
  run = str(tmp_path / "run")
  for shard, message in ((three_levels, r"levels/train-00000.*\[2 levels"),
                         (too_big, r"vocab/train-00000.*outside the model's vocabulary \[0, 16\)"),
                         (utterances, r"codes/train-00000.*lack \['question', 'answer'\]")):
    with pytest.raises(ValueError, match=message):
      trainer.train_and_evaluate(pair_config(shard, ""), run)
  assert not os.path.exists(os.path.join(run, "checkpoints", "0"))

  # init_from: a codec checkpoint, or an S2S model of another size.
  codec_dir = str(tmp_path / "codec")
  codec_config = codec_configs.get_config("smoke")
  checkpoints.save(codec_dir, 0, zeros_like(codec_trainer.abstract_state(codec_config)),
                   {"task": "codec", "codec": json.loads(codec_config.codec.to_json())})
  with pytest.raises(ValueError, match="not an S2S checkpoint"):
    trainer.train_and_evaluate(pair_config(good, "", init_from=codec_dir), run)
  other = pair_config(good, "", **{"model.hidden_dim": 32})
  shapes = jax.eval_shape(lambda: trainer.init_variables(other, jax.random.key(0)))
  small = trainer.model_config(other)
  checkpoints.save(str(tmp_path / "small"), 0, zeros_like(shapes),
                   checkpoints.model_meta("s2s", variant=small.variant, model=small.to_dict()))
  with pytest.raises(ValueError, match=r"small.*hidden_dim \(32 vs 64\)"):
    trainer.train_and_evaluate(pair_config(good, "", init_from=str(tmp_path / "small")), run)


def test_one_device_and_two_hosts_of_four_devices_train_alike(tmp_path, uninterrupted):
  """The smoke stage 1 on 1 device and on 8: 2 processes × 4 devices."""
  port = 20000 + (os.getpid() + 7) % 20000
  devices = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4"
  hosts = [_launch(tmp_path / "hosts", "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", env={"XLA_FLAGS": devices})
           for i in range(2)]
  for process in hosts:
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output
    assert "on 8 devices, 2 processes" in output, output

  reference = _rows(uninterrupted)
  assert [r["step"] for r in reference] == [*range(1, RUN["total_steps"] + 1), RUN["total_steps"]]
  for a, b in zip(reference, _rows(tmp_path / "hosts"), strict=True):
    for key in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
      if key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
  a, b = (inference.load_s2s(str(workdir)).variables for workdir in
          (tmp_path / "hosts", uninterrupted))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
