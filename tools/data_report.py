r"""Data report for audio shards: hours per source and speaker, durations, levels, clipping.

  python tools/data_report.py --shards=/data/shards/slr66,/data/shards/kathbath --output=report/
  python tools/data_report.py --output=report/   # the bundled sample corpus

Writes `report.md` (tables), `report.json` (everything, all speakers), `duration_histogram.png`
and `level_histogram.png`. Statistics come from the shard builder's sidecars (instant even for
thousands of hours); shards without sidecars are scanned.
"""

import glob
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telugu_jax.data import records  # noqa: E402
from telugu_jax.data import report  # noqa: E402
from telugu_jax.data import sample_corpus  # noqa: E402
from telugu_jax.data import shards  # noqa: E402

_SHARDS = flags.DEFINE_list(
    "shards", [], "Shard folders, shard files or globs (default: the bundled sample corpus)."
)
_OUTPUT = flags.DEFINE_string("output", "data_report", "Output folder.")
_TOP = flags.DEFINE_integer("top_speakers", 30, "Speakers listed in report.md.")


def _expand(specs):
  paths = []
  for spec in specs:
    if os.path.isdir(spec):
      paths += records.list_shards(spec)
    else:
      matches = sorted(glob.glob(spec))
      if not matches:
        raise FileNotFoundError(f"{spec}: no such shard, folder or glob match")
      paths += matches
  return paths


def main(argv):
  del argv
  if _SHARDS.value:
    paths = _expand(_SHARDS.value)
  else:
    paths = [p for split in sample_corpus.sample_shards().values() for p in split]
  metas = shards.read_index(paths)
  if not metas:
    raise SystemExit(f"no audio records in {len(paths)} shards")
  written = report.write_report(metas, _OUTPUT.value, top_speakers=_TOP.value)
  with open(written["markdown"], encoding="utf-8") as f:
    print(f.read())
  print("Wrote " + ", ".join(sorted(written.values())))


if __name__ == "__main__":
  app.run(main)
