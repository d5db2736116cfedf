r"""Regenerates or extends the bundled sample Telugu corpus with espeak-ng.

Needs `espeak-ng` (`apt-get install espeak-ng`; it ships a Telugu voice, `-v te`).

  # Regenerate what is missing (existing FLAC files are kept):
  python tools/make_sample_corpus.py
  # Extend: append sentences to the corpus (one Telugu sentence per line), more per voice:
  python tools/make_sample_corpus.py --add_sentences=more_te.txt --per_voice=16
  # Rebuild every clip, e.g. after changing the voices in telugu_jax/data/sample_corpus.py:
  python tools/make_sample_corpus.py --overwrite

Synthesis is deterministic for a given espeak-ng version, so regenerated files are identical.
Keep the corpus small (a few MB): it is committed to the repository.
"""

import os
import sys

import soundfile
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telugu_jax.data import sample_corpus  # noqa: E402

_OUTPUT = flags.DEFINE_string("output_dir", sample_corpus.CORPUS_DIR, "Corpus folder.")
_ADD = flags.DEFINE_string(
    "add_sentences", None, "UTF-8 file of Telugu sentences (one per line) to append."
)
_PER_VOICE = flags.DEFINE_integer(
    "per_voice", sample_corpus.UTTERANCES_PER_VOICE, "Utterances per voice."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Re-synthesise existing clips.")


def main(argv):
  del argv
  sentences_path = os.path.join(_OUTPUT.value, sample_corpus.SENTENCES_NAME)
  sentences = sample_corpus.read_sentences(sentences_path)
  if _ADD.value:
    known = set(sentences)
    sentences += [s for s in sample_corpus.read_sentences(_ADD.value) if s not in known]
  rows = sample_corpus.make_corpus(
      _OUTPUT.value, sentences=sentences, per_voice=_PER_VOICE.value, overwrite=_OVERWRITE.value
  )
  total = 0
  for row in rows:
    info = soundfile.info(os.path.join(_OUTPUT.value, row["path"]))
    total += info.frames / info.samplerate
  size = sum(
      os.path.getsize(os.path.join(dirpath, name))
      for dirpath, _, names in os.walk(_OUTPUT.value)
      for name in names
  )
  voices = len({row["speaker"] for row in rows})
  print(
      f"{len(rows)} clips, {voices} voices, {total / 60:.1f} min, {size / 1e6:.2f} MB "
      f"in {_OUTPUT.value}"
  )


if __name__ == "__main__":
  app.run(main)
