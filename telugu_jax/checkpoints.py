"""Orbax checkpoints shared by the converter, the trainers and inference.

A checkpoint directory is an Orbax `CheckpointManager` root: one sub-directory per step, each with
the items "state" (an arbitrary pytree of arrays), "meta" (a JSON dict naming the task, the
model configuration and anything else needed to rebuild the state) and, for training
checkpoints, "data" (the input pipeline's position). Orbax writes each step to a temporary
directory and renames it when complete, so a step is never half-written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy

STATE = "state"
META = "meta"
DATA = "data"  # the grain iterator's state (training checkpoints only), one file per process
T = TypeVar("T")


class CorruptCheckpointError(RuntimeError):
  """No step of a checkpoint directory can be read."""


def model_meta(task: str, **models: Any) -> dict[str, Any]:
  """The metadata that names what a checkpoint holds: its `task` ("codec" or "s2s") and the
  configuration of each model in it (e.g. `codec=..., discriminator=...` or `variant=...,
  model=...`), as JSON values. Trainers and the converter add their own fields to it."""
  return {"task": task, **models}


def read_model_meta(path: str, task: str, step: int | None = None) -> tuple[str, dict[str, Any]]:
  """`(checkpoint root, metadata)` of a converted checkpoint or training workdir of `task`.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: the checkpoint is of another task.
  """
  root = resolve(path)
  meta = read_meta(root, step)
  if meta.get("task") != task:
    what = {"s2s": "an S2S", "codec": "a codec"}.get(task, f"a {task}")
    raise ValueError(f"{path}: not {what} checkpoint (its task is {meta.get('task')!r})")
  return root, meta


def _manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
      item_names=(STATE, META, DATA),
  )


def latest_step(directory: str) -> int | None:
  """Returns the newest complete step in `directory`, or None if it holds none."""
  if not os.path.isdir(directory):
    return None
  with _manager(directory) as manager:
    return manager.latest_step()


def save(directory: str, step: int, state: Any, meta: dict[str, Any]) -> None:
  """Writes `state` and `meta` as step `step` of `directory` and waits until it is on disk."""
  with _manager(directory) as manager:
    manager.save(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
        ),
    )
    manager.wait_until_finished()


def restore_newest_intact(directory: str, steps: list[int], restore_step: Callable[[int], T],
                          step: int | None = None) -> T:
  """`restore_step(step)`, or, when no step is asked for, of the newest step that restores.

  A step that fails to restore (a corrupted file, a truncated array) is skipped with a warning
  naming it, and the next older one is tried.

  Raises:
    FileNotFoundError: `directory` holds no checkpoint (or not `step`).
    CorruptCheckpointError: no step restores; the message names each step and its error.
  """
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"{directory}: no checkpoint at step {step} (steps present: "
                              f"{sorted(steps)})")
    return restore_step(step)
  if not steps:
    raise FileNotFoundError(f"{directory}: no checkpoint")
  errors, skipped = [], []
  for candidate in sorted(steps, reverse=True):
    try:
      restored = restore_step(candidate)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
      message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
      logging.warning("Checkpoint step %d in %s cannot be read (%s); trying an older step",
                      candidate, directory, message)
      errors.append(f"step {candidate}: {message}")
      skipped.append(str(candidate))
      continue
    if skipped:
      logging.warning("Using checkpoint step %d of %s; skipped the unreadable step(s) %s",
                      candidate, directory, ", ".join(skipped))
    return restored
  raise CorruptCheckpointError(f"{directory}: no readable checkpoint; " + "; ".join(errors))


def read_meta(directory: str, step: int | None = None) -> dict[str, Any]:
  """Returns the JSON metadata of a step (the newest readable one by default)."""
  with _manager(directory) as manager:
    return restore_newest_intact(
        directory, manager.all_steps(),
        lambda s: manager.restore(s, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[
            META], step)


def restore(
    directory: str, step: int | None = None, abstract_state: Any = None
) -> tuple[Any, dict[str, Any]]:
  """Restores `(state, meta)` of a step (the latest by default).

  Args:
    directory: the checkpoint root.
    step: which step; None for the latest.
    abstract_state: optional pytree of `jax.ShapeDtypeStruct` (with shardings) giving the
      structure, dtypes and placement to restore into. Without it arrays come back as they were
      saved, on the default device, with containers as plain dicts and lists.
  """
  state_args = (
      ocp.args.StandardRestore() if abstract_state is None
      else ocp.args.StandardRestore(abstract_state)
  )
  with _manager(directory) as manager:
    restored = restore_newest_intact(
        directory, manager.all_steps(),
        lambda s: manager.restore(
            s, args=ocp.args.Composite(**{STATE: state_args, META: ocp.args.JsonRestore()})),
        step)
    return restored[STATE], restored[META]


def restore_subtree(directory: str, abstract_subtree: Any, step: int | None = None) -> Any:
  """Restores only the parts of the state named by `abstract_subtree` (e.g. `{"gen": ...}`).

  Reads nothing else from disk: loading a codec for inference skips the optimizer moments.
  """
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
  args = ocp.args.PyTreeRestore(item=abstract_subtree, restore_args=restore_args,
                                partial_restore=True)
  with _manager(directory) as manager:
    return restore_newest_intact(
        directory, manager.all_steps(),
        lambda s: manager.restore(s, args=ocp.args.Composite(**{STATE: args}))[STATE], step)


WORKDIR_CHECKPOINTS = "checkpoints"


def resolve(path: str) -> str:
  """The checkpoint root for `path`: itself, or a training workdir's `checkpoints/`.

  Raises:
    FileNotFoundError: naming the path, when neither holds a complete checkpoint.
  """
  for candidate in (path, os.path.join(path, WORKDIR_CHECKPOINTS)):
    if latest_step(candidate) is not None:
      return candidate
  raise FileNotFoundError(
      f"{path}: no checkpoint here or in {os.path.join(path, WORKDIR_CHECKPOINTS)} "
      "(expected a converted checkpoint or a training workdir)")


class TrainingCheckpoints:
  """A trainer's checkpoints: asynchronous saves of state, metadata and the data iterator,
  keeping the latest `keep` steps plus the best one by the validation metric passed to `save`
  (higher is better: pass e.g. minus a loss).
  """

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(n=keep),
        preservation_policy.BestN(get_metric_fn=lambda metrics: metrics["best"], n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        self.directory,
        # The workdir lock makes this process the only writer: a temporary folder left by a
        # killed or failed save is garbage.
        options=ocp.CheckpointManagerOptions(create=True, preservation_policy=policy,
                                             cleanup_tmp_directories=True),
        item_names=(STATE, META, DATA),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], data_iterator: Any,
           best: float | None = None) -> None:
    """Starts writing step `step` in the background (`wait()` blocks until it is on disk).

    `best`: the validation value this step is ranked by (higher is better), if evaluated.
    """
    self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta),
            DATA: grain.checkpoint.CheckpointSave(data_iterator)}),
        metrics=None if best is None else {"best": float(best)})

  def restore_latest(self, abstract_state: Any, data_iterator: Any
                     ) -> tuple[int, Any, dict] | None:
    """Restores the newest readable step: `(step, state, meta)`, with `data_iterator` moved to
    its saved position; None when there is no checkpoint.

    Unreadable newer steps are skipped with a warning (`restore_newest_intact`) and moved aside
    to `<step>.unreadable` (by process 0), so that training can write those steps again.
    """
    steps = self._manager.all_steps()
    if not steps:
      return None

    def restore(step):
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore(),
          DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
      return step, restored[STATE], restored[META]

    restored = restore_newest_intact(self.directory, list(steps), restore)
    unreadable = [step for step in steps if step > restored[0]]
    if unreadable and jax.process_index() == 0:
      for step in unreadable:
        path = os.path.join(self.directory, str(step))
        os.replace(path, f"{path}.unreadable")
        logging.warning("Moved the unreadable checkpoint %s aside to %s.unreadable", path, path)
    if unreadable:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("telugu_jax: unreadable checkpoints moved aside")
      self._manager.reload()
    return restored

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
