"""Entry point: `python -m telugu_jax.main --config=configs/codec.py --workdir=DIR`.

Runs the trainer named by `config.task` ("codec" or "s2s"), holding a lock on the workdir for
the run's lifetime (one trainer per workdir). With `--distributed` it first joins a
multi-process run through `jax.distributed.initialize()`: on SLURM and TPU pods everything is
detected; else pass `--coordinator_address`, `--num_processes` and `--process_id` (see
`launch/`).
"""

import errno
import importlib.util
import logging as logging_lib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run (jax.distributed.initialize).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (when not detected).")
flags.DEFINE_integer("num_processes", None, "Number of processes (when not detected).")
flags.DEFINE_integer("process_id", None, "This process's index (when not detected).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _unknown_field(argv: list[str]) -> str | None:
  """The first `--config.a.b=...` override naming a field the loaded config lacks, explained."""
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    node, path = config, arg[len("--config."):].split("=", 1)[0].split(".")
    for depth, name in enumerate(path):
      if not hasattr(node, "keys") or name not in node.keys():
        where = ".".join(["config", *path[:depth]])
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        return (f"{arg}: {where} has no field {name!r}" +
                (f"; its fields are: {', '.join(valid)}" if valid else ""))
      node = node[name]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    print(f"error: {_unknown_field(argv) or e}", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {e}\nPass --help for usage.", file=sys.stderr)
    sys.exit(2)


_DISK_FULL_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded")


def _disk_full(error: BaseException) -> str | None:
  """The first line of a "no space" / "file too large" error in `error`'s chain, if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error)
    if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        or any(t in text for t in _DISK_FULL_TEXTS)):
      return text.splitlines()[0] if text else type(error).__name__
    error = error.__cause__ or error.__context__
  return None


def _is_save_aftermath(error: BaseException | None) -> bool:
  """A failed background checkpoint write's echo: the full disk itself, or Orbax's event loop
  closed under TensorStore callbacks still pending (the save is abandoned; the error that
  matters reaches the main thread and is reported there in one line)."""
  return error is not None and (_disk_full(error) is not None
                                or str(error) == "Event loop is closed")


class _DropSaveAftermath(logging_lib.Filter):
  """Drops the log records (with their tracebacks) that Orbax's background save threads write
  when a write fails for lack of space: each thread logs the same error, hundreds of lines."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    return not (_is_save_aftermath(error) or any(t in message for t in _DISK_FULL_TEXTS))


def _quiet_save_aftermath() -> None:
  logging.get_absl_handler().addFilter(_DropSaveAftermath())
  hook = sys.unraisablehook  # What TensorStore's callbacks print their exceptions through.

  def unraisablehook(unraisable):
    if not _is_save_aftermath(unraisable.exc_value):
      hook(unraisable)

  sys.unraisablehook = unraisablehook


def main(argv):
  del argv
  import jax

  from telugu_jax.train import loop

  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  _quiet_save_aftermath()
  if FLAGS.distributed:
    # CPU-only multi-process runs need a collectives implementation (GPUs and TPUs bring theirs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  config = FLAGS.config
  if config.task == "codec":
    from telugu_jax.train import codec as trainer
  elif config.task == "s2s":
    from telugu_jax.train import s2s as trainer
  else:
    raise ValueError(f"unknown task {config.task!r}: expected 'codec' or 's2s'")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  lock = loop.WorkdirLock(FLAGS.workdir)
  try:
    if jax.process_index() == 0:
      lock.acquire()
    trainer.train_and_evaluate(config, FLAGS.workdir)
  except Exception as e:
    reason = _disk_full(e)  # It surfaces from Orbax, TensorStore or plain writes, as any type.
    if reason is not None:
      print(f"error: out of disk space writing under {os.path.abspath(FLAGS.workdir)} "
            f"({reason}); the checkpoints written before are intact", file=sys.stderr)
      sys.exit(1)
    if isinstance(e, (loop.WorkdirInUseError, FloatingPointError, FileNotFoundError, ValueError)):
      # Errors about the user's input and run (bad configs, data, checkpoints): their message
      # names the problem; a traceback would only bury it.
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    raise
  finally:
    lock.release()


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
