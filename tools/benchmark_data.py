r"""Throughput of the codec training pipeline: audio-seconds of crops delivered per second.

  python tools/benchmark_data.py                       # the bundled sample corpus
  python tools/benchmark_data.py --shards=/data/shards/slr66 --num_workers=4 --steps=500

Reads local shards through `pipelines.codec_train_iterator` (decode, random crop, RMS
normalisation, batching) and reports batches/s and audio-seconds/s after a warm-up. The
project's target is >= 50 audio-seconds/s of 1 s crops on 2 CPU cores.
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telugu_jax.data import pipelines  # noqa: E402
from telugu_jax.data import records  # noqa: E402
from telugu_jax.data import sample_corpus  # noqa: E402

_SHARDS = flags.DEFINE_list("shards", [], "Shard folders or files (default: sample corpus).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Crops per batch.")
_CROP = flags.DEFINE_integer("crop_samples", 16000, "Crop length in samples (16 kHz).")
_WORKERS = flags.DEFINE_integer("num_workers", 0, "Grain worker processes.")
_STEPS = flags.DEFINE_integer("steps", 300, "Timed batches.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed batches first.")

TARGET_AUDIO_SECONDS_PER_SECOND = 50.0


def main(argv):
  del argv
  if _SHARDS.value:
    paths = []
    for spec in _SHARDS.value:
      paths += records.list_shards(spec) if os.path.isdir(spec) else [spec]
  else:
    paths = sample_corpus.sample_shards()["train"]
  it = pipelines.codec_train_iterator(
      paths,
      batch_size=_BATCH.value,
      crop_samples=_CROP.value,
      num_workers=_WORKERS.value,
      process_index=0,
      process_count=1,
  )
  for _ in range(_WARMUP.value):
    next(it)
  start = time.perf_counter()
  samples = 0
  for _ in range(_STEPS.value):
    samples += next(it)["audio"].size
  elapsed = time.perf_counter() - start
  audio_seconds = samples / 16000 / elapsed
  print(f"shards: {len(paths)} files; batch {_BATCH.value} x {_CROP.value} samples; "
        f"workers {_WORKERS.value}; cpus {os.cpu_count()}")  # fmt: skip
  print(f"{_STEPS.value / elapsed:.1f} batches/s, {audio_seconds:.0f} audio-seconds/s "
        f"(target >= {TARGET_AUDIO_SECONDS_PER_SECOND:.0f}: "
        f"{'met' if audio_seconds >= TARGET_AUDIO_SECONDS_PER_SECOND else 'NOT met'})")  # fmt: skip
  skipped = pipelines.corrupt_records_skipped(it)
  if skipped:
    print(f"{skipped} corrupt records skipped")


if __name__ == "__main__":
  app.run(main)
