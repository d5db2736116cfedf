"""Orbax checkpoints shared by the converter, the trainers and inference.

A checkpoint directory is an Orbax `CheckpointManager` root: one sub-directory per step, each with
the items "state" (an arbitrary pytree of arrays), "meta" (a JSON dict naming the task, the
model configuration and anything else needed to rebuild the state) and, for training
checkpoints, "data" (the input pipeline's position). Orbax writes each step to a temporary
directory and renames it when complete, so a step is never half-written.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

STATE = "state"
META = "meta"
DATA = "data"  # the grain iterator's state (training checkpoints only), one file per process


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


def _resolve_step(manager: ocp.CheckpointManager, directory: str, step: int | None) -> int:
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(
        f"{directory}: no checkpoint"
        + ("" if step is None else f" at step {step} (steps present: {manager.all_steps()})")
    )
  return step


def read_meta(directory: str, step: int | None = None) -> dict[str, Any]:
  """Returns the JSON metadata of a step (the latest by default)."""
  with _manager(directory) as manager:
    step = _resolve_step(manager, directory, step)
    return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


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
  with _manager(directory) as manager:
    step = _resolve_step(manager, directory, step)
    state_args = (
        ocp.args.StandardRestore() if abstract_state is None
        else ocp.args.StandardRestore(abstract_state)
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE: state_args, META: ocp.args.JsonRestore()})
    )
    return restored[STATE], restored[META]


def restore_subtree(directory: str, abstract_subtree: Any, step: int | None = None) -> Any:
  """Restores only the parts of the state named by `abstract_subtree` (e.g. `{"gen": ...}`).

  Reads nothing else from disk: loading a codec for inference skips the optimizer moments.
  """
  with _manager(directory) as manager:
    step = _resolve_step(manager, directory, step)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
    args = ocp.args.PyTreeRestore(item=abstract_subtree, restore_args=restore_args,
                                  partial_restore=True)
    return manager.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE]


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
  keeping the latest `keep` steps plus the best one by a validation metric (higher is better).
  """

  def __init__(self, directory: str, keep: int, best_metric: str = "snr"):
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(n=keep),
        preservation_policy.BestN(get_metric_fn=lambda metrics: metrics[best_metric], n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(create=True, preservation_policy=policy),
        item_names=(STATE, META, DATA),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], data_iterator: Any,
           metrics: dict[str, float] | None = None, force: bool = False) -> None:
    """Starts writing step `step` in the background (`wait()` blocks until it is on disk)."""
    self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta),
            DATA: grain.checkpoint.CheckpointSave(data_iterator)}),
        metrics=metrics, force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict]:
    """Restores state and metadata of `step`, and moves `data_iterator` to its saved position."""
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore(),
        DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
    return restored[STATE], restored[META]

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
