"""Mozilla Common Voice, Telugu (`te`)."""

from __future__ import annotations

import csv
import os
import sys

import tensorflow_datasets as tfds

from telugu_jax.data.tfds_builders import base

_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


class CommonVoiceTe(base.TeluguSpeechBuilder):
  """Common Voice Telugu: crowd-read Telugu sentences (MP3), CC0.

  Downloads require accepting Mozilla's terms (an e-mail address) on
  https://commonvoice.mozilla.org/datasets (now the Mozilla Data Collective), so this builder
  needs `manual_dir`: put the release archive `cv-corpus-<version>-te.tar.gz` there, or its
  extracted `cv-corpus-<version>/te/` folder. Keep one release in `manual_dir`.

  Layout: `cv-corpus-<version>/te/clips/*.mp3` with `train.tsv`, `dev.tsv` and `test.tsv`
  (tab-separated, columns `client_id`, `path`, `sentence`, `gender`, ...) beside `clips/`.
  Splits: `train`, `validation` (`dev.tsv`) and `test`. Only those validated splits are read:
  clips of `other.tsv` (such as the evaluation clips in `shared/data/common-voice-te-dev`) and
  `invalidated.tsv` are not included.
  """

  name = "common_voice_te"
  HOMEPAGE = "https://commonvoice.mozilla.org/te/datasets"
  DESCRIPTION = "Mozilla Common Voice, Telugu."
  CITATION = """@inproceedings{ardila-etal-2020-common,
  title = {Common Voice: A Massively-Multilingual Speech Corpus},
  author = {Ardila, Rosana and others},
  booktitle = {Proceedings of LREC 2020},
  pages = {4218--4222},
  year = {2020}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Telugu release of Common Voice (`cv-corpus-<version>-te.tar.gz`) from
https://commonvoice.mozilla.org/datasets after accepting the terms, and place the archive (or
its extracted `cv-corpus-<version>/te/` folder) in `manual_dir`."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = dl_manager.manual_dir
    roots = base.materialize(dl_manager, sorted(manual.iterdir()))
    if os.path.isfile(os.path.join(manual, _SPLIT_FILES["train"])):
      roots.append(os.fspath(manual))  # manual_dir is the `te/` folder itself.
    corpora = sorted(
        {
            os.path.dirname(p)
            for p in base.walk_files(roots)
            if os.path.basename(p) == _SPLIT_FILES["train"]
            and os.path.isdir(os.path.join(os.path.dirname(p), "clips"))
        }
    )
    if not corpora:
      raise FileNotFoundError(f"{manual}: no Common Voice folder (train.tsv beside clips/)")
    if len(corpora) > 1:
      raise ValueError(f"{manual}: several Common Voice releases found, keep one: {corpora}")
    folder = corpora[0]
    return {
        split: self._generate_examples(folder, tsv)
        for split, tsv in _SPLIT_FILES.items()
        if os.path.isfile(os.path.join(folder, tsv))
    }

  def _generate_examples(self, folder: str, tsv: str):
    csv.field_size_limit(sys.maxsize)
    with open(os.path.join(folder, tsv), encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for row in rows:
      clip = row["path"]
      example = self._example(
          os.path.splitext(clip)[0],
          os.path.join(folder, "clips", clip),
          speaker=row.get("client_id") or "",
          gender=row.get("gender") or "",
          transcript=(row.get("sentence") or "").strip(),
      )
      if example is not None:
        yield example
