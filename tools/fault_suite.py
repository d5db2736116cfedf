r"""The fault suite: a long randomized fault-injection run of the trainers and data tools.

    python tools/fault_suite.py [--trainer=codec|s2s|both] [--kills=N] [--seed=S] \
        [--workdir=DIR] [--keep] [--scenarios=kill,sigterm,...] [--timeout=SECONDS]

Each scenario runs in its own folder inside a new `fault-suite-*` folder in `--workdir`
(default: the system's temporary folder), which is deleted at the end unless `--keep` (which also
keeps every process's output, in its `logs/`). It launches `python -m telugu_jax.main` (or a
tool) the way a user does, on the smoke configs made smaller still (`TINY_CODEC`, `TINY_S2S`: a
launch trains for seconds once JAX has started), waits at most `--timeout` seconds for any
process, and ends PASS or FAIL with its evidence. Every process runs a copy of the code taken when
the suite starts (`source/`), so edits to the checkout during the run change nothing. The
scenarios, one row each in the table at the end (per trainer where a trainer is involved):

  kill              SIGKILL at `--kills` random moments: a random delay after a random step,
                    while a checkpoint is being written (a step folder without
                    `commit_success.txt`, or Orbax's temporary folder), and for the codec at an
                    epoch boundary; the run is then resumed, and its per-step metrics and final
                    state (parameters, optimizer state, data position) must equal an
                    uninterrupted run's bit for bit, with exactly one metrics row per step.
  sigterm           SIGTERM mid-run: exit 0 with a checkpoint at the step it stopped.
  second_trainer    a second trainer on a busy workdir: refused with a short message naming the
                    owner; the first trains on and stops cleanly.
  nan               a non-finite loss after a good checkpoint: the run stops with a short
                    message naming that checkpoint, which stays intact and loadable.
  full_disk         a full disk (a 30 MB tmpfs, or `RLIMIT_FSIZE` where mounting is not
                    allowed): a short error, and the earlier checkpoints intact and loadable.
  shard_bytes       bytes flipped in a shard file (one in its first record) and in records:
                    training skips every damaged record, names it and counts it in the
                    checkpointed data state.
  checkpoint_bytes  bytes flipped in the newest checkpoint's array files: loading the model and
                    resuming fall back to the previous step with a warning; the resumed run
                    retrains the lost steps exactly and writes the damaged step again.
  code_file_bytes   (codec) bytes flipped in `.tjc` files: decoding rejects each, naming it.
  bad_audio         truncated, clipped and silent WAV files into `tools/build_shards.py`:
                    listed in `summary.json` (skipped, or kept as warnings with
                    `--keep_bad_audio`), all JSON standard.
  bad_config        `--config.nonexistent=1` and `--config.compute_dtype=float16`: short errors
                    naming the problem (the unknown key with the valid ones; the valid dtypes).

A failing run's "error lines" are its output after its last progress line; more than
`MAX_ERROR_LINES` fails the scenario (a traceback is not a message). Progress lines go to stdout
as the suite runs; the exit code is 1 if any scenario failed. `--trainer=both --kills=3` took
42 minutes on a busy 2-core machine, most of it JAX starting up and compiling.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import glob
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from telugu_jax import checkpoints, inference  # noqa: E402
from telugu_jax.data import pipelines, records, sample_corpus  # noqa: E402

# The codec smoke config made tiny (as in tests/test_train_codec.py): 2 period + 1 STFT
# discriminators, 2 VQ levels, 2000-sample crops, a progress line and metrics row every step.
TINY_CODEC = {
    "discriminator.periods": (2, 3), "discriminator.n_ffts": (256,),
    "discriminator.period_channels": (2, 2, 2, 2, 2), "discriminator.stft_channels": 2,
    "codec.num_quantizers": 2, "data.batch_size": 4, "data.crop_samples": 2000,
    "eval_crop_samples": 4000, "eval_batches": 1, "log_every": 1, "eval_every": 0,
    "data.eval_folder": "",
}
TINY_S2S = {"log_every": 1, "eval_every": 0}
SCENARIOS = ("kill", "sigterm", "second_trainer", "nan", "full_disk", "shard_bytes",
             "checkpoint_bytes", "code_file_bytes", "bad_audio", "bad_config")
MAX_ERROR_LINES = 10
FOREVER = 100_000  # total_steps of runs that are stopped by a signal
_PROGRESS = re.compile(r"^step (\d+)/(\d+) ")
_NORMAL = re.compile(r"^(step \d+/|training |resumed from |initialised from |eval step )")
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] ")


@dataclasses.dataclass(frozen=True)
class Trainer:
  """How the suite runs one trainer.

  Attributes:
    name: "codec" or "s2s".
    config: the `--config` argument.
    tiny: overrides given to every launch.
    schedule: the length, checkpoint interval (and for the codec the epochs) of the runs that
      are killed and compared.
    good_steps: steps of a short run that, at the schedule's checkpoint interval, leaves two
      checkpoints or more.
    nan: an override that makes the loss non-finite.
    batch_size: the global batch of `tiny`.
    load: `(workdir, step)` → the model's variables, the way a user loads them.
  """

  name: str
  config: str
  tiny: dict[str, Any]
  schedule: dict[str, int]
  good_steps: int
  nan: dict[str, str]
  batch_size: int
  load: Callable[[str, int | None], Any]

  @property
  def total(self) -> int:
    return self.schedule["total_steps"]

  @property
  def every(self) -> int:
    return self.schedule["checkpoint_every"]


TRAINERS = {
    "codec": Trainer(
        "codec", "configs/codec.py:smoke", TINY_CODEC,
        # Every checkpoint on an epoch boundary, where the learning rate changes.
        {"total_steps": 16, "checkpoint_every": 2, "steps_per_epoch": 2, "num_epochs": 10},
        good_steps=4, nan={"loss_weights.l1": "nan"}, batch_size=4,
        load=lambda path, step: inference.load_codec(path, step).variables),
    "s2s": Trainer(
        "s2s", "configs/s2s.py:smoke", TINY_S2S, {"total_steps": 24, "checkpoint_every": 4},
        good_steps=8, nan={"loss.label_smoothing": "nan"}, batch_size=8,
        load=lambda path, step: inference.load_s2s(path, step).variables),
}


class Failed(Exception):
  """A trial's check failed; `saw` is what the user saw (a line of the run's output), if any."""

  def __init__(self, message: str, saw: str = ""):
    super().__init__(message)
    self.saw = saw


def expect(condition: bool, message: str, saw: str = "") -> None:
  """Raises `Failed(message, saw)` unless `condition`."""
  if not condition:
    raise Failed(message, saw)


# --- processes ------------------------------------------------------------------------------------


class Launch:
  """A child process whose merged stdout and stderr lines are collected as they arrive."""

  def __init__(self, command: list[str], cwd: str, env: dict[str, str], log_path: str,
               preexec_fn: Callable[[], None] | None = None):
    self.command = command
    self.log_path = log_path  # the command and its output, as they arrive
    self.started = time.monotonic()
    self.lines: list[tuple[float, str]] = []  # (seconds since the start, line)
    self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    preexec_fn=preexec_fn)
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    with open(self.log_path, "w") as log:
      log.write(" ".join(self.command) + "\n")
      for line in self.process.stdout:
        self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))
        log.write(line)
        log.flush()

  @property
  def output(self) -> list[str]:
    return [line for _, line in self.lines]

  def tail(self, count: int = 6) -> str:
    return " | ".join(self.output[-count:])

  def running(self) -> bool:
    return self.process.poll() is None

  def wait_line(self, pattern: str, timeout: float) -> str:
    """The first output line matching the regex `pattern`, waiting for it.

    Raises:
      Failed: the process ended, or `timeout` seconds passed, without such a line.
    """
    regex, seen, deadline = re.compile(pattern), 0, time.monotonic() + timeout
    while True:
      ended = not self._reader.is_alive()  # read before the lines: no line is missed
      count = len(self.lines)
      for _, line in self.lines[seen:count]:
        if regex.search(line):
          return line
      seen = count
      if ended:
        raise Failed(f"the run ended (exit {self.process.wait()}) before printing /{pattern}/: "
                     f"{self.tail()}")
      if time.monotonic() > deadline:
        self.process.kill()
        raise Failed(f"no line /{pattern}/ within {timeout:.0f} s: {self.tail()}")
      time.sleep(0.005)

  def finish(self, timeout: float) -> int:
    """Waits for the process to exit and its output to be read; returns the exit code.

    Raises:
      Failed: it ran longer than `timeout` seconds (it is then killed).
    """
    try:
      code = self.process.wait(timeout=max(0.0, timeout - (time.monotonic() - self.started)))
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
      raise Failed(f"still running after {timeout:.0f} s, killed: {self.tail()}") from None
    self._reader.join()
    return code

  def last_step(self) -> int | None:
    """The step of the last progress line printed."""
    steps = [int(m.group(1)) for line in self.output if (m := _PROGRESS.match(line))]
    return steps[-1] if steps else None

  def step_seconds(self) -> float:
    """The median time between progress lines."""
    times = [t for t, line in self.lines if _PROGRESS.match(line)]
    return float(np.median(np.diff(times))) if len(times) > 2 else 0.5

  def first(self, text: str) -> str:
    """The first output line containing `text` ("" if none)."""
    return next((line for line in self.output if text in line), "")

  def error_lines(self) -> list[str]:
    """The lines after the last progress or start-up line (what a failing run printed)."""
    output = self.output
    last = max((i for i, line in enumerate(output) if _NORMAL.match(line)), default=-1)
    return output[last + 1:]

  def error_line(self, text: str) -> str:
    """The first error line containing `text`, else the last error line ("" if none)."""
    errors = self.error_lines()
    return next((line for line in errors if text in line), errors[-1] if errors else "")


def _short_error_after(launch: Launch, code: int, passed: str, *needles: str) -> None:
  """`short_error`, whose failure also tells what had passed before it."""
  try:
    short_error(launch, code, *needles)
  except Failed as e:
    raise Failed(f"{passed}; {e}", e.saw) from None


def short_error(launch: Launch, code: int, *needles: str) -> str:
  """Checks that a failed run exited non-zero with a short error containing every needle.

  Returns:
    The line the user sees (the first error line holding the first needle).
  """
  errors = launch.error_lines()
  saw = launch.error_line(needles[0])
  expect(code != 0, f"exit {code}, expected a failure: {launch.tail()}", saw)
  for needle in needles:
    expect(any(needle in line for line in errors),
           f"exit {code}; {needle!r} not in its error: {' | '.join(errors[-8:])}", saw)
  if len(errors) > MAX_ERROR_LINES:
    common, times = collections.Counter(errors).most_common(1)[0]
    raise Failed(f"exit {code}, but {len(errors)} error lines ({len(launch.output)} in all), more "
                 f"than {MAX_ERROR_LINES}: {errors.count('Traceback (most recent call last):')} "
                 f"tracebacks, the most repeated line {common.strip()!r} ×{times}; the last: "
                 f"{errors[-1]}", saw)
  return saw


# --- workdirs, checkpoints and metrics ------------------------------------------------------------


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, checkpoints.WORKDIR_CHECKPOINTS)


def committed_steps(workdir: str) -> list[int]:
  """Step folders holding `commit_success.txt`."""
  directory = _checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit() and
                os.path.exists(os.path.join(directory, name, "commit_success.txt")))


def unfinished(workdir: str, step: int | None = None) -> list[str]:
  """Checkpoint folders being written (or left half-written): Orbax's temporary folders and step
  folders without `commit_success.txt`; only those of `step` if given."""
  directory = _checkpoint_dir(workdir)
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  found = []
  for name in names:
    stem = name.split(".", 1)[0]
    if step is not None and stem != str(step):
      continue
    if _TMP_SUFFIX in name or (name.isdigit() and not os.path.exists(
        os.path.join(directory, name, "commit_success.txt"))):
      found.append(name)
  return sorted(found)


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step of a training workdir, as Orbax sees it."""
  return checkpoints.latest_step(_checkpoint_dir(workdir))


def saved_state(workdir: str, step: int | None = None) -> Any:
  """The whole training state saved at `step` (the newest readable by default)."""
  return checkpoints.restore(_checkpoint_dir(workdir), step)[0]


def differences(a: Any, b: Any) -> tuple[int, list[str]]:
  """`(number of leaves, paths of those that differ)` between two pytrees: in structure,
  dtype, shape or any bit."""
  leaves_a = {jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_flatten_with_path(a)[0]}
  leaves_b = {jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_flatten_with_path(b)[0]}
  differing = sorted(set(leaves_a) ^ set(leaves_b))
  for key in sorted(set(leaves_a) & set(leaves_b)):
    x, y = leaves_a[key], leaves_b[key]
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      differing.append(key)
  return len(leaves_a), differing


def _reject_constant(name: str) -> None:
  raise ValueError(f"{name} is not standard JSON")


def strict_json(text: str) -> Any:
  """`json.loads` that rejects NaN and Infinity."""
  return json.loads(text, parse_constant=_reject_constant)


def metrics_rows(workdir: str) -> list[dict[str, Any]]:
  """The rows of a workdir's `metrics.jsonl`, parsed strictly."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [strict_json(line) for line in f if line.strip()]


def expect_one_row_per_step(rows: list[dict[str, Any]], last: int) -> None:
  """Checks that `rows` are those of steps 1 to `last`, one each, in order."""
  steps = [row["step"] for row in rows]
  expect(steps == list(range(1, last + 1)),
         f"metrics.jsonl steps are {_ranges(steps)}, expected one row for each of 1-{last}")


def metric_differences(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[str]:
  """Per-step values that differ (throughputs aside) between rows of the same steps."""
  found = []
  for row, ref in zip(rows, reference):
    for key in sorted((row.keys() | ref.keys()) - {"step", "wall_time"}):
      if not key.endswith("_per_second") and row.get(key, "absent") != ref.get(key, "absent"):
        found.append(f"step {row['step']} {key}: {row.get(key, 'absent')} vs "
                     f"{ref.get(key, 'absent')}")
  return found


def data_state(workdir: str, step: int) -> list[Any]:
  """The checkpointed data-iterator states of `step` (one per process)."""
  paths = sorted(glob.glob(os.path.join(_checkpoint_dir(workdir), str(step), "data", "*.json")))
  states = []
  for path in paths:
    with open(path) as f:
      states.append(strict_json(f.read()))
  return states


def corrupt_count(state: Any) -> int:
  """The sum of `corrupt_records_skipped` over a data-iterator state."""
  if isinstance(state, dict):
    return sum(int(v) if k == "corrupt_records_skipped" else corrupt_count(v)
               for k, v in state.items())
  if isinstance(state, list):
    return sum(corrupt_count(v) for v in state)
  return 0


def flip_bytes(path: str, offsets: list[int]) -> None:
  """Inverts every bit of the bytes of `path` at `offsets`, in place."""
  with open(path, "r+b") as f:
    for offset in offsets:
      f.seek(offset)
      byte = f.read(1)
      f.seek(offset)
      f.write(bytes([byte[0] ^ 0xFF]))


def _ranges(values: list[int]) -> str:
  """[1, 2, 3, 5, 5] → "1-3, 5, 5"."""
  parts, start = [], 0
  for i in range(1, len(values) + 1):
    if i == len(values) or values[i] != values[i - 1] + 1:
      parts.append(str(values[start]) if i - 1 == start else f"{values[start]}-{values[i - 1]}")
      start = i
  return ", ".join(parts) or "none"


class LogCapture(logging.Handler):
  """Collects the warnings that absl logs in this process while in a `with` block."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(record.getMessage())

  def __enter__(self) -> LogCapture:
    logger = logging.getLogger("absl")
    logger.addHandler(self)
    self._propagate, logger.propagate = logger.propagate, False  # kept off the suite's output
    return self

  def __exit__(self, *exc) -> None:
    logger = logging.getLogger("absl")
    logger.removeHandler(self)
    logger.propagate = self._propagate


# --- the suite ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
  """One line of the final table, filled trial by trial."""

  scenario: str
  trials: int = 0
  passed: int = 0
  saw: str = ""
  evidence: list[str] = dataclasses.field(default_factory=list)
  _saw_failed: bool = False

  @property
  def result(self) -> str:
    return "PASS" if self.trials and self.passed == self.trials else "FAIL"


@dataclasses.dataclass
class Suite:
  """Where the scenarios run, and how.

  Attributes:
    root: the suite's folder.
    source: the copy of the code that every process runs (see `snapshot`).
    seed: the random seed.
    timeout: seconds any one process may run.
    env: the processes' environment.
    started: when the suite started (`time.monotonic()`).
    launches: every process started, in order.
  """

  root: str
  source: str
  seed: int
  timeout: float
  env: dict[str, str]
  started: float = dataclasses.field(default_factory=time.monotonic)
  launches: list[Launch] = dataclasses.field(default_factory=list)

  def say(self, text: str) -> None:
    elapsed = int(time.monotonic() - self.started)
    print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}", flush=True)

  def folder(self, *names: str) -> str:
    path = os.path.join(self.root, *names)
    os.makedirs(path, exist_ok=True)
    return path

  def rng(self, *names: str) -> random.Random:
    """A generator of its own per scenario and trainer: reruns with a seed repeat each one."""
    return random.Random("/".join([str(self.seed), *names]))

  def train(self, trainer: Trainer, workdir: str,
            preexec_fn: Callable[[], None] | None = None, **overrides: Any) -> Launch:
    """Starts `python -m telugu_jax.main` on `trainer`'s tiny config with `overrides`."""
    flags = [f"--config.{key}={_flag(value)}"
             for key, value in {**trainer.tiny, **overrides}.items()]
    return self._launch([sys.executable, "-m", "telugu_jax.main", f"--config={trainer.config}",
                         f"--workdir={workdir}", *flags], preexec_fn)

  def train_to_end(self, trainer: Trainer, workdir: str, **overrides: Any) -> Launch:
    """A run that must finish with exit 0."""
    run = self.train(trainer, workdir, **overrides)
    code = run.finish(self.timeout)
    expect(code == 0, f"a plain run to {workdir} failed (exit {code}): {run.tail()}")
    return run

  def tool(self, *args: str) -> Launch:
    return self._launch([sys.executable, *args])

  def _launch(self, command: list[str],
              preexec_fn: Callable[[], None] | None = None) -> Launch:
    log = os.path.join(self.folder("logs"), f"{len(self.launches) + 1:03d}.log")
    self.launches.append(Launch(command, self.source, self.env, log, preexec_fn))
    return self.launches[-1]

  def trial(self, row: Row, name: str, fn: Callable[[], tuple[str, str]]) -> None:
    """Runs one trial of `row`: `fn` returns `(what the user saw, evidence)` or raises."""
    row.trials += 1
    self.say(f"{row.scenario}: {name} ...")
    first = len(self.launches)
    try:
      saw, evidence = fn()
      ok = True
    except Failed as e:
      ok, saw, evidence = False, e.saw, str(e)
    except Exception as e:  # A crash in the suite's own checks fails the trial, not the run.
      ok, saw, evidence = False, "", f"{type(e).__name__}: {str(e)[:500]}"
    finally:
      for launch in self.launches[first:]:  # none outlives its trial
        if launch.running():
          launch.process.kill()
          launch.process.wait()
    row.passed += ok
    logs = [os.path.relpath(launch.log_path, self.root) for launch in self.launches[first:]]
    if not ok and logs:
      evidence += f" [output in {', '.join(logs)}]"
    saw = _ABSL_PREFIX.sub("", saw)
    if saw and (not row.saw or (not ok and not row._saw_failed)):
      row.saw, row._saw_failed = saw, not ok
    row.evidence.append(f"{'PASS' if ok else 'FAIL'} {name}: {evidence}")
    self.say(f"{row.scenario}: {name}: {'PASS' if ok else 'FAIL'}: {evidence[:300]}")


def snapshot(root: str) -> str:
  """Copies the code the processes run (`telugu_jax/`, `configs/`, `tools/`) to `root/source`.

  The suite runs for long, often in a checkout that is being edited: every process runs the code
  as it was when the suite started, so that runs compared with each other run the same code.
  """
  source = os.path.join(root, "source")
  for name in ("telugu_jax", "configs", "tools"):
    shutil.copytree(os.path.join(ROOT, name), os.path.join(source, name),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  return source


def _flag(value: Any) -> str:
  return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


# --- 1. kill -9 -----------------------------------------------------------------------------------


def kill_scenario(suite: Suite, trainer: Trainer, kills: int) -> Row:
  row = Row(f"kill -9, resume ({trainer.name})")
  rng, total = suite.rng("kill", trainer.name), trainer.total
  suite.say(f"{row.scenario}: an uninterrupted run of {total} steps for reference ...")
  try:
    reference_dir = suite.folder("kill", trainer.name, "reference")
    reference = suite.train_to_end(trainer, reference_dir, **trainer.schedule)
    expected = {"rows": metrics_rows(reference_dir), "state": saved_state(reference_dir, total),
                "data": data_state(reference_dir, total), "step_seconds": reference.step_seconds()}
  except (Failed, OSError, ValueError) as e:
    expected = (f"the uninterrupted reference run failed: {e} "
                f"[output in {os.path.relpath(suite.launches[-1].log_path, suite.root)}]")
  modes = ["random", "checkpoint write"] + (
      ["epoch boundary"] if "steps_per_epoch" in trainer.schedule else [])
  for i in range(kills):
    mode = modes[i % len(modes)]
    workdir = suite.folder("kill", trainer.name, f"trial{i + 1}")
    suite.trial(row, f"kill {i + 1}/{kills} ({mode})",
                lambda: _kill_trial(suite, trainer, mode, workdir, expected, rng))
  return row


def _kill_trial(suite: Suite, trainer: Trainer, mode: str, workdir: str, expected: Any,
                rng: random.Random) -> tuple[str, str]:
  if isinstance(expected, str):
    raise Failed(expected)
  total, every = trainer.total, trainer.every
  run = suite.train(trainer, workdir, **trainer.schedule)
  if mode == "random":
    step = rng.randint(1, total - 2)
    delay = rng.uniform(0.0, expected["step_seconds"])
    run.wait_line(rf"^step {step}/", suite.timeout)
    time.sleep(delay)
    run.process.kill()
    moment = f"{delay:.2f} s after step {step}"
  elif mode == "checkpoint write":
    step = rng.choice(range(every, total, every))
    moment = _kill_during_write(suite, run, workdir, step)
  else:
    step = rng.choice(range(every, total, trainer.schedule["steps_per_epoch"]))
    run.wait_line(rf"^step {step}/", suite.timeout)
    run.process.kill()
    moment = f"at the end of epoch {step // trainer.schedule['steps_per_epoch']} (step {step})"
  killed = run.finish(suite.timeout)
  expect(killed == -signal.SIGKILL, f"the kill came too late: the run had ended (exit {killed})")
  printed, left = run.last_step(), unfinished(workdir)
  kept, restart = committed_steps(workdir), latest_step(workdir)
  rows_before = 0  # lines, a torn last row included
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows_before = sum(1 for _ in f)

  resumed = suite.train(trainer, workdir, **trainer.schedule)
  code = resumed.finish(suite.timeout)
  saw = resumed.first("resumed from") or resumed.first("training ")
  expect(code == 0, f"the resumed run failed (exit {code}): {resumed.tail()}", saw)
  if restart is not None:
    expect(f"at step {restart}" in saw, f"expected a resume from step {restart}: {saw!r}", saw)
  rows = metrics_rows(workdir)
  expect_one_row_per_step(rows, total)
  different = metric_differences(rows, expected["rows"])
  expect(not different, f"per-step metrics differ from the uninterrupted run: {different[:3]}",
         saw)
  leaves, differing = differences(saved_state(workdir, total), expected["state"])
  expect(not differing, f"final state differs from the uninterrupted run in {len(differing)} of "
         f"{leaves} arrays: {differing[:3]}", saw)
  expect(data_state(workdir, total) == expected["data"],
         "the final data-iterator position differs from the uninterrupted run's", saw)
  after = unfinished(workdir)
  return saw, (f"killed {moment} (last progress line: step {printed}); on disk: steps "
               f"{kept or 'none'}" + (f", unfinished {left}" if left else "") +
               f", {rows_before} metrics rows; resumed from step {restart or 0}; {total} rows, "
               f"one per step, equal to the reference's; all {leaves} state arrays and the "
               "data position bit-identical" +
               (f"; NOTE: unfinished checkpoint folders remain: {after}" if after else ""))


def _kill_during_write(suite: Suite, run: Launch, workdir: str, step: int) -> str:
  """Kills `run` while step `step`'s checkpoint is being written (polling every 2 ms)."""
  deadline = time.monotonic() + suite.timeout
  while True:
    writing = unfinished(workdir, step)
    if writing:
      run.process.kill()
      return f"while checkpoint {step} was being written ({', '.join(writing)} on disk)"
    if step in committed_steps(workdir):
      run.process.kill()
      return (f"right after checkpoint {step} was committed (its write fell between two polls "
              "2 ms apart)")
    expect(run.running(), f"the run ended before checkpoint {step}: {run.tail()}")
    expect(time.monotonic() < deadline, f"no checkpoint {step} within {suite.timeout:.0f} s")
    time.sleep(0.002)


# --- 2. SIGTERM -----------------------------------------------------------------------------------


def sigterm_scenario(suite: Suite, trainer: Trainer) -> Row:
  row = Row(f"SIGTERM ({trainer.name})")
  step = suite.rng("sigterm", trainer.name).randint(2, 6)
  suite.trial(row, f"SIGTERM after step {step}",
              lambda: _sigterm_trial(suite, trainer, step, suite.folder("sigterm", trainer.name)))
  return row


def _stop(suite: Suite, run: Launch, workdir: str) -> tuple[int, str]:
  """Sends SIGTERM; checks exit 0, a checkpoint at the step it stopped and one metrics row per
  step. Returns that step and the user's message."""
  run.process.send_signal(signal.SIGTERM)
  code = run.finish(suite.timeout)
  stopped = run.last_step()
  saw = run.first("Stopping after step") or run.first("Received signal")
  expect(code == 0, f"exit {code} after SIGTERM: {run.tail()}", saw)
  expect(stopped is not None, f"no progress line: {run.tail()}", saw)
  expect(latest_step(workdir) == stopped,
         f"stopped after step {stopped}, newest checkpoint {latest_step(workdir)}", saw)
  expect(int(saved_state(workdir)["step"]) == stopped, f"checkpoint {stopped}'s state has another "
         "step", saw)
  expect_one_row_per_step(metrics_rows(workdir), stopped)
  return stopped, saw


def _sigterm_trial(suite: Suite, trainer: Trainer, step: int, workdir: str) -> tuple[str, str]:
  run = suite.train(trainer, workdir, total_steps=FOREVER, checkpoint_every=FOREVER)
  run.wait_line(rf"^step {step}/", suite.timeout)
  stopped, saw = _stop(suite, run, workdir)
  return saw, (f"SIGTERM sent after step {step}'s progress line: exit 0 after step {stopped}, "
               f"checkpoint {stopped} restores with step {stopped}, {stopped} metrics rows")


# --- 3. a second trainer --------------------------------------------------------------------------


def second_trainer_scenario(suite: Suite, trainer: Trainer) -> Row:
  row = Row(f"second trainer ({trainer.name})")
  workdir = suite.folder("second_trainer", trainer.name)
  suite.trial(row, "a second trainer on a busy workdir",
              lambda: _second_trainer_trial(suite, trainer, workdir))
  return row


def _second_trainer_trial(suite: Suite, trainer: Trainer, workdir: str) -> tuple[str, str]:
  first = suite.train(trainer, workdir, total_steps=FOREVER, checkpoint_every=FOREVER)
  first.wait_line(r"^step 2/", suite.timeout)
  second = suite.train(trainer, workdir, total_steps=FOREVER, checkpoint_every=FOREVER)
  code = second.finish(suite.timeout)
  needles = ("in use by another trainer", f"pid {first.process.pid}")
  saw = second.error_line(needles[0])
  expect(code != 0, f"the second trainer ran (exit {code}): {second.tail()}", saw)
  expect(first.running(), f"the first trainer stopped: {first.tail()}", saw)
  with open(os.path.join(workdir, "trainer.lock")) as f:
    owner = f.read().strip()
  expect(f"pid {first.process.pid}" in owner, f"the lock file now says {owner!r}", saw)
  refused_at = first.last_step()
  first.wait_line(rf"^step {refused_at + 2}/", suite.timeout)
  stopped, _ = _stop(suite, first, workdir)
  unaffected = (f"the first trained on from step {refused_at} and stopped cleanly after step "
                f"{stopped} on SIGTERM, one metrics row per step")
  _short_error_after(second, code, unaffected, *needles)
  return saw, f"second trainer: exit {code}, {len(second.output)} lines; {unaffected}"


# --- 4. a non-finite loss -------------------------------------------------------------------------


def nan_scenario(suite: Suite, trainer: Trainer) -> Row:
  row = Row(f"NaN loss ({trainer.name})")
  workdir = suite.folder("nan", trainer.name)
  suite.trial(row, f"{_flag_text(trainer.nan)} after checkpoint {trainer.good_steps}",
              lambda: _nan_trial(suite, trainer, workdir))
  return row


def _flag_text(overrides: dict[str, Any]) -> str:
  return " ".join(f"--config.{k}={_flag(v)}" for k, v in overrides.items())


def _nan_trial(suite: Suite, trainer: Trainer, workdir: str) -> tuple[str, str]:
  good = trainer.good_steps
  suite.train_to_end(trainer, workdir, total_steps=good, checkpoint_every=good)
  before = trainer.load(workdir, good)
  run = suite.train(trainer, workdir, total_steps=good + 4, checkpoint_every=1, **trainer.nan)
  code = run.finish(suite.timeout)
  needles = (f"non-finite loss at step {good + 1}", f"last good checkpoint is step {good}")
  saw = run.error_line(needles[0])
  expect(latest_step(workdir) == good, f"newest checkpoint {latest_step(workdir)}, expected "
         f"{good}", saw)
  leaves, differing = differences(trainer.load(workdir, None), before)
  expect(not differing, f"checkpoint {good} changed in {differing[:3]}", saw)
  intact = f"checkpoint {good} is still the newest and loads ({leaves} arrays, unchanged)"
  _short_error_after(run, code, intact, *needles)
  return saw, f"exit {code}, {len(run.error_lines())} error lines; {intact}"


# --- 5. a full disk -------------------------------------------------------------------------------


def full_disk_scenario(suite: Suite, trainer: Trainer, keep: bool) -> Row:
  row = Row(f"full disk ({trainer.name})")
  folder = suite.folder("full_disk", trainer.name)
  mount = os.path.join(folder, "tmpfs")
  os.makedirs(mount, exist_ok=True)
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", mount],
                             capture_output=True, text=True)
    error = "" if mounted.returncode == 0 else (
        (mounted.stderr or mounted.stdout).strip().splitlines() or ["no message"])[-1]
  except OSError as e:  # no mount command
    error = str(e)
  if not error:
    workdir = os.path.join(mount, "run")
    try:
      suite.trial(row, "a 30 MB tmpfs filled up mid-run",
                  lambda: _full_disk_trial(suite, trainer, workdir, mount))
    finally:
      try:
        if keep and os.path.isdir(workdir):  # the tmpfs goes with the unmount
          shutil.copytree(workdir, os.path.join(folder, "run"), dirs_exist_ok=True)
      finally:
        subprocess.run(["umount", mount], check=False)
  else:
    suite.say(f"{row.scenario}: cannot mount a tmpfs ({error}); using RLIMIT_FSIZE")
    suite.trial(row, f"RLIMIT_FSIZE below the size of a checkpoint file (no tmpfs: {error})",
                lambda: _full_disk_trial(suite, trainer, os.path.join(folder, "run"), None))
  return row


def _full_disk_trial(suite: Suite, trainer: Trainer, workdir: str,
                     tmpfs: str | None) -> tuple[str, str]:
  """Trains to a checkpoint, fills `tmpfs` (or, without one, limits the file size of the next
  run), and resumes: the run must fail with a short error and leave the checkpoint as it was."""
  good, every = trainer.good_steps, trainer.every
  suite.train_to_end(trainer, workdir, total_steps=good, checkpoint_every=every)
  before = saved_state(workdir, good)
  step_dir = os.path.join(_checkpoint_dir(workdir), str(good))
  sizes = [os.path.getsize(p) for p in glob.glob(os.path.join(step_dir, "**"), recursive=True)
           if os.path.isfile(p)]
  if tmpfs is not None:
    left = sum(sizes) // 2
    filler = _fill(tmpfs, left)
    how = f"tmpfs filled ({filler >> 20} MiB filler), {left >> 10} KiB left"
    limit = None
  else:
    limit = max(sizes) // 2
    how = f"RLIMIT_FSIZE {limit} bytes"
  run = suite.train(
      trainer, workdir, total_steps=good + 4 * every, checkpoint_every=every,
      preexec_fn=None if limit is None else (
          lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))))
  code = run.finish(suite.timeout)
  saw = run.error_line("out of disk space")
  newest = latest_step(workdir)
  expect(newest == good, f"newest checkpoint {newest} after the failure, expected {good}", saw)
  leaves, differing = differences(saved_state(workdir, good), before)
  expect(not differing, f"checkpoint {good} changed in {differing[:3]}", saw)
  trainer.load(workdir, None)
  left = unfinished(workdir)
  intact = (f"{how}; the resumed run stopped after step {run.last_step()}; checkpoint {good} "
            f"intact ({leaves} arrays bit-identical) and loads" +
            (f"; half-written folders left: {left}" if left else ""))
  _short_error_after(run, code, intact, "out of disk space")
  return saw, (f"{intact}; exit {code}, {len(run.error_lines())} error lines "
               f"({len(run.output)} in all)")


def _fill(mount: str, leave: int) -> int:
  """Fills the file system at `mount` with a file, then frees `leave` bytes; returns its size."""
  path = os.path.join(mount, "filler")
  chunk = bytes(1 << 20)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  try:
    while True:
      try:
        os.write(fd, chunk)
      except OSError as e:
        if e.errno != errno.ENOSPC:
          raise
        break
  finally:
    os.close(fd)
  size = max(0, os.path.getsize(path) - leave)
  os.truncate(path, size)
  return size


# --- 6. flipped bytes -----------------------------------------------------------------------------


def shard_bytes_scenario(suite: Suite, trainer: Trainer) -> Row:
  row = Row(f"flipped bytes: shards ({trainer.name})")
  folder = suite.folder("shard_bytes", trainer.name)
  rng = suite.rng("shard_bytes", trainer.name)
  suite.trial(row, "3 bytes flipped in a shard file (one in its first record), 3 records with a "
              "flipped payload byte",
              lambda: _shard_bytes_trial(suite, trainer, folder, rng))
  return row


def _shard_bytes_trial(suite: Suite, trainer: Trainer, folder: str,
                       rng: random.Random) -> tuple[str, str]:
  if trainer.name == "codec":
    sources = sample_corpus.sample_shards()["train"]
  else:
    sources = sample_corpus.sample_code_shards()["train"]
    info = os.path.join(os.path.dirname(sources[0]), sample_corpus.CODEC_INFO_NAME)
    shutil.copy(info, os.path.join(folder, sample_corpus.CODEC_INFO_NAME))
  # A: a copy of a shard with bytes flipped on disk (ArrayRecord's chunk hashes catch them): one
  # in its first record (bytes 64-511; the first 64 are the file signature), two in the middle.
  damaged_file = os.path.join(folder, "train-00000.arrayrecord")
  shutil.copy(sources[0], damaged_file)
  size = os.path.getsize(damaged_file)
  flip_bytes(damaged_file, [rng.randrange(64, 512)] +
             [rng.randrange(size // 10, size * 9 // 10) for _ in range(2)])
  # B: a shard written with records whose payload has a flipped byte (the record CRC).
  damaged_records = os.path.join(folder, "train-00001.arrayrecord")
  originals = records.read_records(sources[1])
  chosen = set(rng.sample(range(len(originals)), 3))
  with records.ShardWriter(damaged_records) as writer:
    for index, record in enumerate(originals):
      if index in chosen:
        record = bytearray(record)
        start = 8 + int.from_bytes(record[4:8], "little")
        record[rng.randrange(start, len(record))] ^= 0xFF
        record = bytes(record)
      writer.write(record)
  source = pipelines.RecordSource([damaged_file, damaged_records])
  corrupt = set()
  for index in range(len(source)):
    location, record = source[index]
    try:
      records.decode_record(record)
    except records.CorruptRecordError:
      corrupt.add(location)
  expect(bool(corrupt), "the flipped bytes damaged no record (the suite's own fault)")
  # Enough steps to see every record once.
  steps = (len(source) - len(corrupt)) // trainer.batch_size + 2
  workdir = os.path.join(folder, "run")
  run = suite.train(trainer, workdir, total_steps=steps, checkpoint_every=steps,
                    **{"data.train_shards": f"{damaged_file},{damaged_records}",
                       "data.validation_shards": ""})
  code = run.finish(suite.timeout)
  skips = [line for line in run.output if "Skipping corrupt record" in line]
  saw = skips[0] if skips else run.error_line("Error")
  expect(code == 0, f"exit {code}: {run.tail()}", saw)
  logged = {re.search(r"Skipping corrupt record (.+? record \d+):", line).group(1)
            for line in skips}
  expect(logged == corrupt, f"skipped {sorted(logged)}, but the damaged records are "
         f"{sorted(corrupt)}", saw)
  counted = sum(corrupt_count(state) for state in data_state(workdir, steps))
  expect(counted == len(skips), f"the checkpoint counts {counted} skipped records, the log "
         f"{len(skips)}", saw)
  in_file = sum(location.startswith(damaged_file + " ") for location in corrupt)
  return saw, (f"{len(corrupt)} of {len(source)} records damaged ({in_file} by the file flips, "
               f"{len(corrupt) - in_file} by the record flips); {steps} steps: exit 0, each "
               f"damaged record named when skipped, {counted} skips counted in checkpoint {steps}")


def checkpoint_bytes_scenario(suite: Suite, trainer: Trainer) -> Row:
  row = Row(f"flipped bytes: checkpoint ({trainer.name})")
  workdir = suite.folder("checkpoint_bytes", trainer.name)
  rng = suite.rng("checkpoint_bytes", trainer.name)
  suite.trial(row, f"bytes flipped in checkpoint {trainer.good_steps}'s array files",
              lambda: _checkpoint_bytes_trial(suite, trainer, workdir, rng))
  return row


def _checkpoint_bytes_trial(suite: Suite, trainer: Trainer, workdir: str,
                            rng: random.Random) -> tuple[str, str]:
  good, every = trainer.good_steps, trainer.every
  previous = good - every
  suite.train_to_end(trainer, workdir, total_steps=good, checkpoint_every=every)
  rows_before, original = metrics_rows(workdir), saved_state(workdir, good)
  paths = glob.glob(os.path.join(_checkpoint_dir(workdir), str(good), "state", "**", "d", "*"),
                    recursive=True)
  expect(bool(paths), f"no array files in checkpoint {good} (the suite's own fault)")
  for path in paths:
    size = os.path.getsize(path)
    flip_bytes(path, sorted({rng.randrange(size) for _ in range(8)}))
  with LogCapture() as log:
    loaded = trainer.load(workdir, None)
  warned = [m for m in log.messages if f"step {good}" in m and "cannot be read" in m]
  expect(bool(warned), f"loading gave no warning about step {good}: {log.messages[:2]}")
  leaves, differing = differences(loaded, trainer.load(workdir, previous))
  expect(not differing, f"the model loaded is not step {previous}'s: {differing[:3]}")

  # The same run again: it must fall back to `previous` and redo the steps after it exactly.
  run = suite.train(trainer, workdir, total_steps=good, checkpoint_every=every)
  code = run.finish(suite.timeout)
  saw = run.first(f"Checkpoint step {good}")
  expect(code == 0, f"the resumed run failed (exit {code}): {run.tail()}", saw)
  expect("cannot be read" in saw, f"no warning about step {good}: {run.tail()}", saw)
  expect(f"at step {previous}" in run.first("resumed from"),
         f"expected a resume from step {previous}: {run.first('resumed from')!r}", saw)
  rows = metrics_rows(workdir)
  expect_one_row_per_step(rows, good)
  different = metric_differences(rows, rows_before)
  expect(not different, f"the retrained steps differ from the first time: {different[:3]}", saw)
  expect(good in committed_steps(workdir),
         f"step {good} was not written again (steps {committed_steps(workdir)})", saw)
  state_leaves, differing = differences(saved_state(workdir, good), original)
  expect(not differing, f"the rewritten step {good} differs from the original in "
         f"{differing[:3]}", saw)
  aside = sorted(n for n in os.listdir(_checkpoint_dir(workdir)) if n.startswith(f"{good}."))
  return saw, (f"{len(paths)} array files damaged; the loader warned and gave step {previous} "
               f"({leaves} arrays bit-identical); rerun warned, resumed at step {previous}, "
               f"retrained steps {previous + 1}-{good} with the same metrics and wrote step "
               f"{good} again, bit-identical to the original ({state_leaves} arrays)" +
               (f"; the damaged one kept as {aside}" if aside else ""))


def code_file_bytes_scenario(suite: Suite) -> Row:
  row = Row("flipped bytes: .tjc code files (codec)")
  folder = suite.folder("code_file_bytes")
  rng = suite.rng("code_file_bytes")
  suite.trial(row, "one byte flipped in the header, the codes, the checksum",
              lambda: _code_file_trial(suite, folder, rng))
  return row


def _code_file_trial(suite: Suite, folder: str, rng: random.Random) -> tuple[str, str]:
  trainer = TRAINERS["codec"]
  workdir = os.path.join(folder, "codec")
  suite.train_to_end(trainer, workdir, total_steps=2, checkpoint_every=2)
  clip = sorted(glob.glob(os.path.join(sample_corpus.CORPUS_DIR, "*", "*.flac")))[0]
  codes = os.path.join(folder, "codes")
  good = os.path.join(codes, "good.tjc")
  encode = suite.tool("tools/codec_files.py", "encode", f"--checkpoint={workdir}", clip, good)
  code = encode.finish(suite.timeout)
  expect(code == 0, f"encoding failed (exit {code}): {encode.tail()}")
  with open(good, "rb") as f:
    data = f.read()
  header_end = 9 + int.from_bytes(data[5:9], "little")
  offsets = {"header": rng.randrange(9, header_end), "codes": rng.randrange(header_end,
             len(data) - 4), "checksum": rng.randrange(len(data) - 4, len(data))}
  for part, offset in offsets.items():
    damaged = os.path.join(codes, f"flipped_{part}.tjc")
    shutil.copy(good, damaged)
    flip_bytes(damaged, [offset])
  decode = suite.tool("tools/codec_files.py", "decode", f"--checkpoint={workdir}", codes,
                      os.path.join(folder, "decoded"))
  code = decode.finish(suite.timeout)
  rejected = [line for line in decode.output if line.startswith("skipped ")]
  saw = rejected[0] if rejected else decode.tail(2)
  expect(code == 1, f"decode exit {code}, expected 1: {decode.tail()}", saw)
  expect(any("decoded 1 of 4 files" in line for line in decode.output),
         f"expected 1 of 4 files decoded: {decode.tail()}", saw)
  for part in offsets:
    name = os.path.join(codes, f"flipped_{part}.tjc")
    expect(any(line.startswith(f"skipped {name}:") and "checksum mismatch" in line
               for line in rejected), f"flipped_{part}.tjc not rejected by its checksum: "
           f"{rejected}", saw)
    expect(not os.path.exists(os.path.join(folder, "decoded", f"flipped_{part}.wav")),
           f"flipped_{part}.tjc was decoded anyway", saw)
  return saw, (f"decode exit 1, 'decoded 1 of 4 files'; flips at bytes {offsets} each rejected "
               "by name with 'checksum mismatch'; no WAV written for them")


# --- 7. bad audio into build_shards ---------------------------------------------------------------


def bad_audio_scenario(suite: Suite) -> Row:
  row = Row("bad audio into build_shards")
  folder = suite.folder("bad_audio")
  inputs = _bad_audio(os.path.join(folder, "input", "speaker"))
  for keep in (False, True):
    name = "--keep_bad_audio" if keep else "default (skip bad audio)"
    suite.trial(row, name, lambda: _bad_audio_trial(suite, folder, inputs, keep))
  return row


def _bad_audio(folder: str) -> dict[str, str]:
  """Writes one good and one truncated, clipped and silent WAV; returns `{problem: path}`."""
  os.makedirs(folder, exist_ok=True)
  rate = 16000
  t = np.arange(2 * rate) / rate
  tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  waves = {"good": tone, "truncated": tone, "clipped": np.clip(10 * tone, -1, 1),
           "silent": np.zeros_like(tone)}
  paths = {}
  for problem, wave in waves.items():
    paths[problem] = os.path.join(folder, f"{problem}.wav")
    soundfile.write(paths[problem], wave, rate, subtype="PCM_16")
  os.truncate(paths["truncated"], os.path.getsize(paths["truncated"]) * 6 // 10)
  return paths


def _bad_audio_trial(suite: Suite, folder: str, inputs: dict[str, str],
                     keep: bool) -> tuple[str, str]:
  output = os.path.join(folder, "keep" if keep else "skip")
  run = suite.tool("tools/build_shards.py", f"--input={os.path.dirname(inputs['good'])}",
                   f"--output={output}", "--workers=1", *(["--keep_bad_audio"] if keep else []))
  code = run.finish(suite.timeout)
  listed = "warnings" if keep else "skipped"
  printed = run.output
  heading = next((i for i, line in enumerate(printed)
                  if re.match(r"^\d+ (files skipped|warnings)", line)), None)
  saw = run.tail(1) if heading is None else " ".join(
      [printed[heading]] + [line.strip() for line in printed[heading + 1:heading + 4]
                            if line.startswith("  ")])
  expect(code == 0, f"exit {code}: {run.tail()}", saw)
  documents = sorted(glob.glob(os.path.join(output, "*.json")))
  for path in documents:
    with open(path) as f:
      try:
        strict_json(f.read())
      except ValueError as e:
        raise Failed(f"{path} is not standard JSON: {e}", saw) from None
  with open(os.path.join(output, "summary.json")) as f:
    summary = strict_json(f.read())
  entries = summary[listed]
  for problem in ("truncated", "clipped", "silent"):
    name = os.path.basename(inputs[problem])
    expect(any(name in entry["path"] and problem in entry.get("problems", []) for entry in entries),
           f"{name} not listed as {problem} in summary.json's {listed}: {entries}", saw)
  expect(not any("good.wav" in entry["path"] for entry in summary["skipped"] + summary["warnings"]),
         "good.wav was listed as bad", saw)
  expect(summary["files"] == (4 if keep else 1), f"{summary['files']} files kept", saw)
  return saw, (f"exit 0; summary.json lists truncated, clipped and silent under {listed!r} with "
               f"their problems, keeps {summary['files']} file(s); {len(documents)} JSON files "
               "parse as standard JSON")


# --- 8. bad configs -------------------------------------------------------------------------------


def bad_config_scenario(suite: Suite, trainer: Trainer) -> Row:
  row = Row(f"bad config ({trainer.name})")
  folder = suite.folder("bad_config", trainer.name)
  cases = (("nonexistent", "1", ("nonexistent", "total_steps", "checkpoint_every")),
           ("compute_dtype", "float16", ("float16", "float32", "bfloat16")))
  for key, value, needles in cases:
    suite.trial(row, f"--config.{key}={value}",
                lambda: _bad_config_trial(suite, trainer, folder, key, value, needles))
  return row


def _bad_config_trial(suite: Suite, trainer: Trainer, folder: str, key: str, value: str,
                      needles: tuple[str, ...]) -> tuple[str, str]:
  run = suite.train(trainer, os.path.join(folder, key), **{key: value})
  code = run.finish(suite.timeout)
  saw = short_error(run, code, *needles)
  expect(not committed_steps(os.path.join(folder, key)), "a checkpoint was written", saw)
  return saw, f"exit {code}, {len(run.error_lines())} error lines, naming {', '.join(needles)}"


# --- main -----------------------------------------------------------------------------------------


def print_table(rows: list[Row], wall: float) -> None:
  header = ("scenario", "trials", "passed", "result", "what the user saw")
  cells = [(r.scenario, str(r.trials), str(r.passed), r.result,
            r.saw if len(r.saw) <= 140 else r.saw[:137] + "...") for r in rows]
  widths = [max(len(c[i]) for c in [header, *cells]) for i in range(4)]
  print()
  for line in [header, tuple("-" * w for w in widths) + ("-" * 17,), *cells]:
    print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[4])
  print()
  print("Evidence:")
  for r in rows:
    print(f"  {r.scenario}:")
    for line in r.evidence:
      print(f"    {line}")
  failed = [r.scenario for r in rows if r.result == "FAIL"]
  print()
  print(f"{len(rows) - len(failed)} of {len(rows)} scenarios passed"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
        + f". Wall time {int(wall) // 60} min {int(wall) % 60} s.")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trainer", choices=("codec", "s2s", "both"), default="both")
  parser.add_argument("--kills", type=int, default=5, help="SIGKILL trials per trainer")
  parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
  parser.add_argument("--workdir", default=None,
                      help="where the suite's folder is made (default: the temporary folder)")
  parser.add_argument("--keep", action="store_true", help="keep the suite's folder at the end")
  parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                      help=f"comma-separated subset of {','.join(SCENARIOS)}")
  parser.add_argument("--timeout", type=float, default=900.0,
                      help="seconds any one process may run")
  args = parser.parse_args(argv)
  chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
  unknown = sorted(set(chosen) - set(SCENARIOS))
  if unknown:
    parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
  if args.kills < 1:
    parser.error("--kills must be at least 1")

  jax.config.update("jax_platforms", "cpu")  # The suite's own checks; the trainers choose.
  seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
  if args.workdir:
    os.makedirs(args.workdir, exist_ok=True)
  root = os.path.abspath(tempfile.mkdtemp(prefix="fault-suite-", dir=args.workdir))
  source = snapshot(root)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "xla-cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  suite = Suite(root, source, seed, args.timeout, env)
  trainers = [TRAINERS[name] for name in (("codec", "s2s") if args.trainer == "both"
                                          else (args.trainer,))]
  suite.say(f"fault suite: seed {seed} (rerun with --seed={seed}), trainers "
            f"{', '.join(t.name for t in trainers)}, scenarios {', '.join(chosen)}, in {root} "
            f"(the code as of now, copied to {source})")

  per_trainer = {
      "kill": lambda t: kill_scenario(suite, t, args.kills),
      "sigterm": lambda t: sigterm_scenario(suite, t),
      "second_trainer": lambda t: second_trainer_scenario(suite, t),
      "nan": lambda t: nan_scenario(suite, t),
      "full_disk": lambda t: full_disk_scenario(suite, t, args.keep),
      "shard_bytes": lambda t: shard_bytes_scenario(suite, t),
      "checkpoint_bytes": lambda t: checkpoint_bytes_scenario(suite, t),
      "bad_config": lambda t: bad_config_scenario(suite, t),
  }
  rows = []
  try:
    for scenario in SCENARIOS:
      if scenario not in chosen:
        continue
      if scenario in per_trainer:
        rows += [per_trainer[scenario](t) for t in trainers]
      elif scenario == "code_file_bytes" and TRAINERS["codec"] in trainers:
        rows.append(code_file_bytes_scenario(suite))
      elif scenario == "bad_audio":
        rows.append(bad_audio_scenario(suite))
  finally:
    print_table(rows, time.monotonic() - suite.started)
    if args.keep:
      print(f"Kept {root}")
    else:
      shutil.rmtree(root, ignore_errors=True)
  return 0 if rows and all(r.result == "PASS" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
