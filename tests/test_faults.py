"""Faults a user meets, and what they see (the fast part of `tools/fault_suite.py`).

A second trainer on a workdir, a stale lock, corrupted checkpoints, a metrics history after a
restart, a non-finite loss before any checkpoint, bad configs. (SIGKILL and SIGTERM resumes,
epoch boundaries included, are in tests/test_train_codec.py and tests/test_train_s2s.py; bad
shards, audio and code files in tests/test_data_shards.py and tests/test_inference_codec.py.)
"""

import glob
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT, with_overrides

from configs import codec as codec_configs
from configs import s2s as s2s_configs
from telugu_jax import checkpoints
from telugu_jax.data import pipelines, sample_corpus
from telugu_jax.train import codec as codec_trainer
from telugu_jax.train import loop
from telugu_jax.train import s2s as s2s_trainer


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "telugu_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_a_second_trainer_on_a_workdir_is_refused(tmp_path):
  with loop.WorkdirLock(str(tmp_path)):
    result = _main("--config=configs/codec.py:smoke", f"--workdir={tmp_path}")
  assert result.returncode == 1
  assert "is in use by another trainer (pid" in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
  (tmp_path / loop.LOCK_FILE).write_text("pid 123 on gone-host, started 2026-01-01 00:00:00\n")
  with loop.WorkdirLock(str(tmp_path)):
    assert f"pid {os.getpid()}" in (tmp_path / loop.LOCK_FILE).read_text()
    with pytest.raises(loop.WorkdirInUseError,
                       match=f"in use by another trainer \\(pid {os.getpid()}"):
      loop.WorkdirLock(str(tmp_path)).acquire()  # flock is per open file: refused in-process too
  assert "no longer running (pid 123 on gone-host" in capsys.readouterr().out


def _flip_array_bytes(step_dir):
  paths = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  assert paths
  for path in paths:
    data = bytearray(open(path, "rb").read())
    data[::7] = bytes(b ^ 0xFF for b in data[::7])
    with open(path, "wb") as f:
      f.write(bytes(data))


def test_a_corrupted_latest_checkpoint_falls_back_to_the_newest_intact(tmp_path, caplog):
  directory = str(tmp_path / "ckpt")
  for step in (1, 2, 3):
    checkpoints.save(directory, step, {"w": np.full((8, 8), step, np.float32)}, {"task": "codec"})
  _flip_array_bytes(os.path.join(directory, "3"))
  state, _ = checkpoints.restore(directory)
  np.testing.assert_array_equal(state["w"], 2)
  assert "skipped the unreadable step(s) 3" in caplog.text
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
    checkpoints.restore(directory, step=7)
  for step in (1, 2):
    _flip_array_bytes(os.path.join(directory, str(step)))
  with pytest.raises(checkpoints.CorruptCheckpointError, match="step 3: .*step 2: .*step 1: "):
    checkpoints.restore(directory)


def test_training_resumes_from_the_newest_intact_checkpoint(tmp_path, caplog):
  manager = checkpoints.TrainingCheckpoints(str(tmp_path), keep=5)
  shards = sample_corpus.sample_shards()["validation"]
  data = pipelines.codec_train_iterator(shards, batch_size=1, crop_samples=100)
  for step in (2, 4):
    next(data)
    manager.save(step, {"w": jnp.full((4,), step, jnp.float32)}, {"step": step}, data)
  manager.wait()
  _flip_array_bytes(str(tmp_path / "4"))
  abstract = {"w": jnp.zeros((4,), jnp.float32)}
  step, state, meta = manager.restore_latest(abstract, data)
  assert step == 2 and meta["step"] == 2
  np.testing.assert_array_equal(state["w"], 2.0)
  assert "Checkpoint step 4" in caplog.text
  assert os.path.isdir(tmp_path / "4.unreadable")  # kept for inspection, out of the way
  manager.save(4, {"w": jnp.full((4,), 5.0, jnp.float32)}, {"step": 4}, data)  # training goes on
  manager.wait()
  assert manager.latest_step() == 4
  manager.close()


def test_metrics_history_drops_rows_after_the_restored_step(tmp_path):
  with open(tmp_path / loop.METRICS_FILE, "w") as f:
    for step in range(1, 9):
      f.write(json.dumps({"step": step, "train/loss": float(step)}) + "\n")
    f.write('{"step": 9, "train/lo')  # torn by a kill mid-write
  log = loop.MetricsLog(str(tmp_path), start_step=4)
  log.scalars(5, {"loss": float("nan")}, prefix="train/")
  log.close()
  lines = (tmp_path / loop.METRICS_FILE).read_text().splitlines()
  rows = [json.loads(line) for line in lines]  # strict JSON: NaN is written as null
  assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
  assert rows[-1]["train/loss"] is None


def test_metrics_log_starts_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed (seconds of every trainer's start-up): the
  log's writer comes without it, logs, and leaves torch importable."""
  pytest.importorskip("torch")
  script = f"""
import glob, sys
from telugu_jax.train import loop
log = loop.MetricsLog({str(tmp_path)!r}, start_step=0)
log.scalars(1, {{"loss": 0.5}}, prefix="train/")
log.close()
assert "torch" not in sys.modules, "torch was imported"
assert glob.glob({str(tmp_path / "tensorboard" / "events.*")!r}), "no event file"
import torch
torch.zeros(1)
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
  config = ml_collections.ConfigDict(dict(log_every=1, eval_every=0, checkpoint_every=100))
  manager = checkpoints.TrainingCheckpoints(str(tmp_path / "checkpoints"), keep=2)
  spec = loop.LoopSpec(
      train_step=lambda state, batch: (state, {"loss": jnp.float32(np.nan)}),
      next_batch=lambda: (None, {"items": 1.0}), evaluate=None, loss_keys=("loss",),
      progress_keys=("loss",), throughput=("items", "items/s"), best_of=lambda r: None)
  log = loop.MetricsLog(str(tmp_path), 0)
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss at step 1 \(loss nan\); no checkpoint was saved"):
    loop.run(spec, config, {}, 0, 10, manager, None, {}, None, log)
  log.close()


def test_bad_configs_get_clear_errors(tmp_path):
  result = _main("--config=configs/s2s.py:smoke", f"--workdir={tmp_path}",
                 "--config.optimizer.learnin_rate=1")
  assert result.returncode == 2
  assert "config.optimizer has no field 'learnin_rate'; its fields are: accumulate_steps" in (
      result.stderr)
  with pytest.raises(ValueError, match="compute_dtype 'float16' is not supported"):
    codec_trainer.build_models(with_overrides(codec_configs.get_config("smoke"), compute_dtype="float16"))
  with pytest.raises(ValueError, match="compute_dtype 'float16' is not supported"):
    s2s_trainer.train_and_evaluate(
        with_overrides(s2s_configs.get_config("smoke"), compute_dtype="float16"), str(tmp_path))
  with pytest.raises(ValueError, match="level_weights needs 8 entries"):
    s2s_trainer.train_and_evaluate(
        with_overrides(s2s_configs.get_config("smoke"), **{"loss.level_weights": (1.0, 2.0)}),
        str(tmp_path))



def test_a_full_disk_is_one_line_whatever_the_error_type():
  """Orbax reports a full disk as a ValueError (RESOURCE_EXHAUSTED ... No space left on device)
  from its background threads: the message is found along the exception chain, and the
  background threads' log records and TensorStore's closed-loop callbacks are not echoed."""
  import errno
  import logging

  from telugu_jax import main

  full = ValueError('RESOURCE_EXHAUSTED: Error writing local file "ckpt/6/_sharding": Failed '
                    "to write 126965 bytes to file 12: No space left on device [os_error_code='28']")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = full
  assert main._disk_full(wrapped).startswith("RESOURCE_EXHAUSTED")
  assert main._disk_full(OSError(errno.ENOSPC, "write")) is not None
  assert main._disk_full(ValueError("unknown variant 'x'")) is None

  drop = main._DropSaveAftermath()

  def record(message, error=None):
    return logging.LogRecord("absl", logging.ERROR, "future.py", 1, message, None,
                             (type(error), error, None) if error else None)

  assert not drop.filter(record("_SignalingThread.run() raised an exception", full))
  assert not drop.filter(record("save thread failed", RuntimeError("Event loop is closed")))
  assert not drop.filter(record(f"write failed: {full}"))
  assert drop.filter(record("Checkpoint step 6 cannot be read", ValueError("bad magic")))
  assert drop.filter(record("Moved the unreadable checkpoint aside"))
