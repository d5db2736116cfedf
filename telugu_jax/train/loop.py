"""The training loop both trainers share, and its parts.

A trainer (`codec.py`, `s2s.py`) owns its state, its jitted update and its evaluation; this module
owns what happens around them, the same way for both:

- the workdir lock (`WorkdirLock`): one trainer per workdir;
- resume order (`restore_or_initialize`): the workdir's newest readable checkpoint, else
  `config.init_from`, else a fresh state;
- the loop (`run`): steps, the progress line, TensorBoard + `metrics.jsonl` (`MetricsLog`, which
  drops rows from after the restored step on resume), the non-finite-loss stop naming the last
  good checkpoint, evaluation and checkpoint scheduling, SIGTERM/SIGINT (`Preemption`: save, then
  stop);
- shard globs (`expand_shards`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from telugu_jax import checkpoints

LOCK_FILE = "trainer.lock"
METRICS_FILE = "metrics.jsonl"


def expand_shards(patterns: str) -> list[str]:
  """Comma-separated globs → sorted shard paths.

  Raises:
    FileNotFoundError: naming the first pattern that matches nothing.
  """
  paths = []
  for pattern in filter(None, (p.strip() for p in patterns.split(","))):
    matches = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matches:
      raise FileNotFoundError(f"no shards match {pattern!r}")
    paths += matches
  return paths


class WorkdirInUseError(RuntimeError):
  """Another live trainer holds the workdir."""


class WorkdirLock:
  """An exclusive `flock` on `<workdir>/trainer.lock` for the life of a run (process 0 only).

  The lock file records its owner (host, pid, start time). The kernel drops the lock when the
  owner exits, however it exits, so a lock file left by a killed run is simply taken over (with
  a message naming the previous owner).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def acquire(self) -> None:
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or "unknown owner"
      f.close()
      raise WorkdirInUseError(
          f"{os.path.dirname(self.path)} is in use by another trainer ({owner}); wait for it "
          "to finish, stop it, or choose another --workdir") from None
    f.seek(0)
    previous = f.read().strip()
    if previous:
      print(f"taking over the lock of a trainer that is no longer running ({previous})",
            flush=True)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f

  def release(self) -> None:
    if self._file is not None:
      self._file.truncate(0)
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class Preemption:
  """Turns SIGTERM (and SIGINT) into a flag that the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    logging.warning("Received signal %d: saving a checkpoint and exiting", signum)
    self.requested = True

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class MetricsLog:
  """Scalars to TensorBoard and `metrics.jsonl` (process 0 only; a no-op elsewhere).

  Opened at `start_step` (the restored step, or 0), it keeps one history: rows of
  `metrics.jsonl` after `start_step` (written by a run that died before its next checkpoint) are
  dropped, and TensorBoard is told to purge events after it. Each row carries its `wall_time`
  (Unix seconds), for learning curves against time.
  """

  def __init__(self, workdir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self.writer = None
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        rows = [line for line in f if line.strip()]
      kept = [row for row in rows if _row_step(row) <= start_step]
      if len(kept) != len(rows):
        with open(self.path + ".tmp", "w") as f:
          f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)
        logging.warning("Dropped %d rows of %s logged after step %d (not in the checkpoint)",
                        len(rows) - len(kept), self.path, start_step)
    self.writer = _summary_writer_class()(os.path.join(workdir, "tensorboard"),
                                          purge_step=start_step if start_step > 0 else None)

  def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    for name, value in values.items():
      self.writer.add_scalar(prefix + name, value, step)
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "wall_time": round(time.time(), 3),
                          **{prefix + k: _json_number(v) for k, v in values.items()}}) + "\n")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _summary_writer_class():
  """tensorboardX's `SummaryWriter`, imported without PyTorch.

  tensorboardX's writer module imports torch whenever it is installed (only to name a type in its
  annotations), which costs every training process about 3 s of start-up on the 2-core CPU; a
  `None` entry in `sys.modules` makes that import fail, and tensorboardX falls back to NumPy
  arrays, which are all we log. Called by `MetricsLog` on the main process only.
  """
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


def _row_step(row: str) -> int:
  try:
    return int(json.loads(row)["step"])
  except (ValueError, KeyError, TypeError):
    return 1 << 62  # An unreadable row (a torn write) goes with the rows after the checkpoint.


def _json_number(value: float) -> float | None:
  return float(value) if np.isfinite(value) else None


@dataclasses.dataclass
class Restored:
  """Where a run starts: its state, metadata and the step of the workdir checkpoint it resumed
  (None for a fresh start or `init_from`)."""

  state: Any
  meta: dict[str, Any]
  checkpoint_step: int | None


def restore_or_initialize(
    checkpoint_manager: checkpoints.TrainingCheckpoints, abstract_state: Any, data_iterator: Any,
    meta: dict[str, Any], init_from: str, load_init: Callable[[str], tuple[Any, dict[str, Any]]],
    fresh: Callable[[], Any]) -> Restored:
  """The resume order: the workdir's newest readable checkpoint, else `init_from`, else fresh.

  Args:
    checkpoint_manager: the workdir's checkpoints.
    abstract_state: the state's `ShapeDtypeStruct`s with shardings.
    data_iterator: restored in place from a workdir checkpoint.
    meta: this run's metadata; `start_step` and `start_epoch` (where the run's schedule began)
      are taken from the checkpoint when resuming, else from `load_init` (`start_epoch` may be
      absent there) or 0.
    init_from: a checkpoint or workdir to start from ("" for none).
    load_init: `init_from` → `(state, extra meta)`; the extra meta may set `start_step`,
      `start_epoch` and `start_learning_rate`.
    fresh: → a fresh state.
  """
  restored = checkpoint_manager.restore_latest(abstract_state, data_iterator)
  if restored is not None:
    step, state, saved = restored
    meta.update({k: saved[k] for k in ("start_step", "start_epoch", "start_learning_rate")
                 if k in saved})
    print(f"resumed from {checkpoint_manager.directory} at step {step}", flush=True)
    return Restored(state, meta, step)
  if init_from:
    state, extra = load_init(init_from)
    meta.update({"start_step": int(jax.device_get(state["step"])), "start_epoch": 0, **extra})
    print(f"initialised from {init_from} (step {meta['start_step']})", flush=True)
    return Restored(state, meta, None)
  meta.update(start_step=0, start_epoch=0)
  return Restored(fresh(), meta, None)


@dataclasses.dataclass
class LoopSpec:
  """What a trainer hands `run`.

  Attributes:
    train_step: jitted `(state, batch) -> (state, metrics)` (device scalars).
    next_batch: `() -> (global batch, host stats)`; the stats (numbers) are summed over the log
      window, e.g. `{"audio_seconds": ...}` or `{"frames": ..., "padded_frames": ...}`.
    evaluate: `(state, step) -> {name: value}`, printing its own summary; or None.
    loss_keys: metrics that must be finite, first the one named in the progress line.
    progress_keys: metrics shown in the progress line.
    throughput: `(stat name, unit)` for the rate in the progress line, e.g.
      `("audio_seconds", "audio-s/s")`.
    best_of: evaluation results → the value the best checkpoint is kept by (higher is better),
      or None.
    step_meta: `step -> dict` of metadata to save with the checkpoint of `step`.
  """

  train_step: Callable[[Any, Any], tuple[Any, dict]]
  next_batch: Callable[[], tuple[Any, dict[str, float]]]
  evaluate: Callable[[Any, int], dict[str, float]] | None
  loss_keys: tuple[str, ...]
  progress_keys: tuple[str, ...]
  throughput: tuple[str, str]
  best_of: Callable[[dict[str, float]], float | None]
  step_meta: Callable[[int], dict[str, Any]] = lambda step: {}
  derived: Callable[[dict[str, float]], dict[str, float]] = lambda window: {}


def run(spec: LoopSpec, config, state: Any, first_step: int, total_steps: int,
        checkpoint_manager: checkpoints.TrainingCheckpoints, last_checkpoint: int | None,
        meta: dict[str, Any], data_iterator: Any, log: MetricsLog) -> tuple[Any, dict[str, float]]:
  """Trains from `first_step` to `total_steps`. Returns the final state and evaluation results.

  Every `config.log_every` steps: a progress line (losses, steps/s, throughput, ETA) and the
  training scalars; every `config.eval_every` steps (and at the end) an evaluation, then a
  checkpoint; every `config.checkpoint_every` steps, at the end and on SIGTERM/SIGINT a
  checkpoint. A non-finite loss stops the run with `FloatingPointError` naming the last good
  checkpoint, which is left as it is.
  """
  is_main = jax.process_index() == 0
  preemption = Preemption()
  last_saved = last_checkpoint
  pending = None  # (step, metrics) of the step dispatched last: checked one step behind
  results: dict[str, float] = {}
  window_start, window_steps, window_stats = time.perf_counter(), 0, {}

  def check(step_and_metrics) -> dict[str, float]:
    step, metrics = step_and_metrics
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = {k: values[k] for k in spec.loss_keys if not np.isfinite(values[k])}
    if bad:
      checkpoint_manager.wait()
      last = (f"the last good checkpoint is step {last_saved} in {checkpoint_manager.directory}, "
              "left intact" if last_saved is not None else
              f"no checkpoint was saved before it (in {checkpoint_manager.directory})")
      raise FloatingPointError(
          f"non-finite loss at step {step} ({', '.join(f'{k} {v}' for k, v in bad.items())}); "
          + last)
    return values

  def save(step, best=None):
    nonlocal last_saved
    checkpoint_manager.save(step, state, {**meta, "step": step, **spec.step_meta(step)},
                            data_iterator, best=best)
    last_saved = step

  try:
    for step in range(first_step, total_steps):
      batch, stats = spec.next_batch()
      state, metrics = spec.train_step(state, batch)
      for name, value in stats.items():
        window_stats[name] = window_stats.get(name, 0.0) + value
      if pending is not None:
        check(pending)
      pending = (step + 1, metrics)
      window_steps += 1
      done = step + 1
      if done % config.log_every == 0 or done == total_steps:
        values = check(pending)
        rate = window_steps / (time.perf_counter() - window_start)
        key, unit = spec.throughput
        throughput = rate * window_stats.get(key, 0.0) / window_steps
        values.update(spec.derived(window_stats))
        if is_main:
          shown = " ".join(f"{k} {values[k]:.4g}" for k in spec.progress_keys if k in values)
          eta = time.strftime("%H:%M:%S", time.gmtime((total_steps - done) / rate))
          print(f"step {done}/{total_steps} | {shown} | {rate:.2f} steps/s | "
                f"{throughput:.1f} {unit} | ETA {eta}", flush=True)
        log.scalars(done, {**values, f"{key}_per_second": throughput}, prefix="train/")
        window_start, window_steps, window_stats = time.perf_counter(), 0, {}
      if spec.evaluate is not None and config.eval_every > 0 and (
          done % config.eval_every == 0 or done == total_steps):
        check(pending)
        results = spec.evaluate(state, done)
        if results:
          log.scalars(done, results)
        save(done, spec.best_of(results))
      elif done % config.checkpoint_every == 0 or done == total_steps or preemption.requested:
        check(pending)
        save(done)
      if preemption.requested:
        logging.warning("Stopping after step %d on request; checkpoint saved", done)
        break
  finally:
    checkpoint_manager.wait()
    checkpoint_manager.close()
    preemption.restore()
  return state, results

