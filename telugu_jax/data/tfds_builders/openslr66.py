"""OpenSLR SLR66: crowdsourced high-quality Telugu multi-speaker speech."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from telugu_jax.data import shards
from telugu_jax.data.tfds_builders import base

_URL = "https://www.openslr.org/resources/66/"
_ARCHIVES = {"female": "te_in_female.zip", "male": "te_in_male.zip"}


class Openslr66Te(base.TeluguSpeechBuilder):
  """OpenSLR SLR66 Telugu (about 10 h, 48 kHz studio recordings, CC BY-SA 4.0).

  Download: direct (the licence allows redistribution): `te_in_female.zip` and `te_in_male.zip`
  from https://www.openslr.org/resources/66/. To build offline, put those two zip files in
  `manual_dir`; they are used instead of downloading.

  Layout: each zip holds `line_index.tsv` (`<file id>\\t<sentence>` per line) and the
  recordings `<file id>.wav` at its root. File ids look like `tef_01234_00012345678`; the first
  two fields name the speaker. The corpus has no official split: 5% of the file ids go to
  `validation` by hash.

    python -c "import tensorflow_datasets as tfds; import telugu_jax.data.tfds_builders; \\
      tfds.builder('openslr66_te', data_dir='/data/tfds', file_format='array_record')\\
      .download_and_prepare()"
  """

  name = "openslr66_te"
  HOMEPAGE = "https://www.openslr.org/66/"
  DESCRIPTION = "Crowdsourced high-quality Telugu multi-speaker speech data set (OpenSLR SLR66)."
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Optional: the archives are downloaded from openslr.org. To build offline, place
`te_in_female.zip` and `te_in_male.zip` in `manual_dir`."""
  CITATION = """@inproceedings{he-etal-2020-open,
  title = {Open-source Multi-speaker Speech Corpora for Building Gujarati, Kannada, Malayalam,
    Marathi, Tamil and Telugu Speech Synthesis Systems},
  author = {He, Fei and others},
  booktitle = {Proceedings of LREC 2020},
  pages = {6494--6503},
  year = {2020}
}"""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = base.manual_dir_or_none(dl_manager)
    archives = {}
    for gender, name in _ARCHIVES.items():
      local = os.path.join(os.fspath(manual), name) if manual is not None else None
      if local is not None and os.path.isfile(local):
        archives[gender] = local
      else:
        archives[gender] = dl_manager.download(_URL + name)
    roots = {gender: base.materialize(dl_manager, [path])[0] for gender, path in archives.items()}
    return {
        "train": self._generate_examples(roots, "train"),
        "validation": self._generate_examples(roots, "validation"),
    }

  def _generate_examples(self, roots: dict[str, str], split: str):
    for gender, root in sorted(roots.items()):
      indexes = [p for p in base.walk_files([root]) if os.path.basename(p) == "line_index.tsv"]
      if not indexes:
        raise FileNotFoundError(f"{root}: no line_index.tsv in the SLR66 {gender} archive")
      for index in indexes:
        folder = os.path.dirname(index)
        for line in base.read_text_lines(index):
          file_id, _, text = line.partition("\t")
          file_id = file_id.strip()
          if shards.split_for_key(file_id, base.VALIDATION_FRACTION) != split:
            continue
          example = self._example(
              file_id,
              os.path.join(folder, file_id + ".wav"),
              speaker="_".join(file_id.split("_")[:2]),
              gender=gender,
              transcript=text.strip(),
          )
          if example is not None:
            yield example
