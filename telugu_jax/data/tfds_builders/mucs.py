"""MUCS 2021 Telugu (the Microsoft Speech Corpus for Indian languages, Telugu part)."""

from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

from telugu_jax.data import shards
from telugu_jax.data.tfds_builders import base


def _split_of(path: str) -> str | None:
  """`train`/`test` from a relative folder such as `te-in-Train` or `Telugu/test`."""
  for part in reversed(path.replace(os.sep, "/").split("/")):
    if re.search(r"test", part, re.IGNORECASE):
      return "test"
    if re.search(r"train", part, re.IGNORECASE):
      return "train"
  return None


class MucsTe(base.TeluguSpeechBuilder):
  """MUCS 2021 Telugu: about 40 h of read Telugu speech (16 kHz), train and test sets.

  OpenSLR SLR103 hosts only the Hindi, Marathi and Odia parts of the MUCS 2021 challenge. The
  Telugu part is Microsoft's "Speech Corpus for Indian languages" (Gujarati, Tamil, Telugu),
  distributed after accepting its licence agreement; hence this builder needs `manual_dir`.

  Put the Telugu train and test data in `manual_dir`, as downloaded (zip/tar archives) or
  extracted. Either layout is recognised:

  * Microsoft's: `te-in-Train/Audios/<id>.wav` + `te-in-Train/transcription.txt`, and the same
    under `te-in-Test/`;
  * the MUCS challenge's: `Telugu/train/audio/<id>.wav` + `Telugu/train/transcription.txt`, and
    `Telugu/test/...`.

  `transcription.txt` has one `<id> <sentence>` per line (tab or space separated). Speakers are
  not given. 5% of the training ids go to `validation` by hash; `test` is the official test set.
  """

  name = "mucs_te"
  HOMEPAGE = "https://navana-tech.github.io/MUCS2021/"
  DESCRIPTION = "MUCS 2021 / Microsoft Speech Corpus for Indian languages: Telugu."
  CITATION = """@inproceedings{diwan21_interspeech,
  title = {MUCS 2021: Multilingual and Code-Switching ASR Challenges for Low Resource Indian
    Languages},
  author = {Diwan, Anuj and others},
  booktitle = {Proc. Interspeech 2021},
  pages = {2446--2450},
  year = {2021}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Telugu train and test sets of Microsoft's "Speech Corpus for Indian languages"
(the MUCS 2021 Telugu data; licence agreement required), and place the archives, or the
extracted `te-in-Train/` and `te-in-Test/` folders, in `manual_dir`."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = dl_manager.manual_dir
    roots = base.materialize(dl_manager, sorted(manual.iterdir()))
    by_split = {"train": [], "test": []}
    for root in roots:
      for path in base.walk_files([root]):
        if os.path.basename(path).lower() == "transcription.txt":
          relative = os.path.relpath(os.path.dirname(path), root)
          split = _split_of(os.path.join(os.path.basename(root), relative))
          if split is not None:
            by_split[split].append(path)
    if not by_split["train"]:
      raise FileNotFoundError(f"{manual}: no train transcription.txt found; see the instructions")
    return {
        "train": self._generate_examples(by_split["train"], "train"),
        "validation": self._generate_examples(by_split["train"], "validation"),
        "test": self._generate_examples(by_split["test"], None),
    }

  def _generate_examples(self, transcripts: list[str], split: str | None):
    for transcript in transcripts:
      folder = os.path.dirname(transcript)
      audio_dirs = [
          os.path.join(folder, d)
          for d in sorted(os.listdir(folder))
          if d.lower() in ("audios", "audio") and os.path.isdir(os.path.join(folder, d))
      ]
      if not audio_dirs:
        raise FileNotFoundError(f"{folder}: no Audios/ or audio/ folder next to transcription.txt")
      for line in base.read_text_lines(transcript):
        parts = line.split(maxsplit=1)
        utt_id, text = parts[0], parts[1] if len(parts) > 1 else ""
        if split is not None and shards.split_for_key(utt_id, base.VALIDATION_FRACTION) != split:
          continue
        example = self._example(
            utt_id, os.path.join(audio_dirs[0], utt_id + ".wav"), transcript=text.strip()
        )
        if example is not None:
          yield example
