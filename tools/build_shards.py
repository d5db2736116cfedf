r"""Converts a folder of audio or a manifest into ArrayRecord shards of 16 kHz int16 PCM.

  python tools/build_shards.py --input=/data/te_audio --output=/data/shards/te_audio --workers=8
  python tools/build_shards.py --input=manifest.csv --output=/data/shards/mine --shard_size=512

Inputs: a folder (WAV/FLAC/MP3/OGG, any rate, mono or stereo; searched recursively; the parent
folder names the speaker; `<stem>.txt` is a transcript) or a `.csv`/`.tsv`/`.jsonl` manifest
with a `path` column and optional `speaker`, `emotion`, `text`, `split`, `source` columns.
Audio is folded to mono (channel mean) and resampled to 16 kHz. Without a `split`, files go to
`train` or `validation` by a hash of their path, identically on every run and machine.

Rerunning the same command resumes: finished shards (recognised by their `.json` sidecar and an
input fingerprint) are skipped, and temporary files of an interrupted build are deleted. Corrupt,
empty or unreadable files are skipped and listed in the summary (and in `summary.json`), never
fatal. So are, by default, truncated WAV files and mostly clipped or silent segments (see
`--max_clipped_fraction`, `--min_peak_dbfs`, `--min_rms_dbfs`); with `--keep_bad_audio` they are
kept, flagged in the record metadata (`problems`) and listed as warnings. See
`telugu_jax/data/shards.py` for the details.
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telugu_jax.data import shards  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "Folder of audio, or a .csv/.tsv/.jsonl manifest.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder for the shards.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding processes.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Input files per shard.")
_VALIDATION = flags.DEFINE_float(
    "validation_fraction", 0.1, "Share of files hashed into the validation split."
)
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 30.0, "Files longer than this are cut into equal segments no longer than it."
)
_SOURCE = flags.DEFINE_string(
    "source", None, "Source name stored in records (default: the input's name)."
)
_KEEP_BAD_AUDIO = flags.DEFINE_bool(
    "keep_bad_audio", False,
    "Keep truncated files (what they hold) and clipped or silent segments, flagged in the "
    "metadata and listed as warnings, instead of skipping them.",
)
_MAX_CLIPPED = flags.DEFINE_float(
    "max_clipped_fraction", 0.01,
    "A segment with a larger share of samples at full scale is clipped.",
)
_MIN_PEAK = flags.DEFINE_float(
    "min_peak_dbfs", -60.0, "A segment whose peak is below this level is silent."
)
_MIN_RMS = flags.DEFINE_float(
    "min_rms_dbfs", -70.0, "A segment whose RMS level is below this is silent."
)
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  del argv
  summary = shards.build_shards(
      _INPUT.value,
      _OUTPUT.value,
      workers=_WORKERS.value,
      shard_size=_SHARD_SIZE.value,
      validation_fraction=_VALIDATION.value,
      max_seconds=_MAX_SECONDS.value,
      source=_SOURCE.value,
      quality=shards.QualityRules(
          max_clipped_fraction=_MAX_CLIPPED.value,
          min_peak_dbfs=_MIN_PEAK.value,
          min_rms_dbfs=_MIN_RMS.value,
          keep_bad_audio=_KEEP_BAD_AUDIO.value,
      ),
  )
  print(shards.format_summary(summary))


if __name__ == "__main__":
  app.run(main)
