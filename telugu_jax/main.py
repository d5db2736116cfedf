"""Entry point: `python -m telugu_jax.main --config=configs/codec.py --workdir=DIR`.

Runs the trainer named by `config.task`. With `--distributed` it first joins a multi-process
run through `jax.distributed.initialize()`: on SLURM and TPU pods everything is detected; else
pass `--coordinator_address`, `--num_processes` and `--process_id` (see `launch/`).
"""

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


def main(argv):
  del argv
  import jax

  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  if FLAGS.distributed:
    # CPU-only multi-process runs need a collectives implementation (GPUs and TPUs bring theirs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  config = FLAGS.config
  if config.task == "codec":
    from telugu_jax.train import codec as trainer
  else:
    raise ValueError(f"unknown task {config.task!r}")
  trainer.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
