"""Kathbath (AI4Bharat IndicSUPERB), Telugu part."""

from __future__ import annotations

import logging
import os

import tensorflow_datasets as tfds

from telugu_jax.data.tfds_builders import base

_URL = "https://indic-asr-public.objectstore.e2enetworks.net/indic-superb/kathbath/clean/"
_ARCHIVES = (
    "transcripts_n2w.tar",
    "train_audio.tar",
    "valid_audio.tar",
    "testkn_audio.tar",
    "testunk_audio.tar",
)
_SPLITS = {
    "train": "train",
    "valid": "validation",
    "test_known": "test_known",
    "testkn": "test_known",
    "test_unknown": "test_unknown",
    "testunk": "test_unknown",
}
_LANGUAGE = "telugu"
_GENDERS = {"m": "male", "f": "female"}


def _telugu_member(name: str) -> bool:
  return _LANGUAGE in name.replace("\\", "/").split("/")


def _split_folder(path: str) -> tuple[str, str] | None:
  """`(split, folder)` for a path inside `.../telugu/<split>/...`, else None."""
  parts = path.replace(os.sep, "/").split("/")
  for i in range(len(parts) - 1):
    if parts[i] == _LANGUAGE and parts[i + 1] in _SPLITS:
      return _SPLITS[parts[i + 1]], "/".join(parts[: i + 2])
  return None


class KathbathTe(base.TeluguSpeechBuilder):
  """Kathbath Telugu: about 155 h of read Telugu speech from 104 speakers (CC0).

  Download: direct (CC0). The public archives at
  `https://indic-asr-public.objectstore.e2enetworks.net/indic-superb/kathbath/clean/`
  (`train_audio.tar` 85 GB, `valid_audio.tar`, `testkn_audio.tar`, `testunk_audio.tar` and
  `transcripts_n2w.tar`) hold all 12 languages; only the `telugu/` members are extracted. To
  build offline (or to avoid re-downloading), put those tar files in `manual_dir`. The copy on
  the Hugging Face hub (`ai4bharat/Kathbath`) is gated and not used.

  Layout inside the archives: `.../telugu/<split>/<uid>-<speaker>-<m|f>.m4a` and
  `.../telugu/<split>/transcription_n2w.txt` (`<file name>\\t<sentence>` per line), with
  `<split>` one of `train`, `valid`, `test_known`, `test_unknown`.

  The audio is M4A (AAC): decoding it needs `ffmpeg` on the system (`apt-get install ffmpeg`).
  """

  name = "kathbath_te"
  HOMEPAGE = "https://github.com/AI4Bharat/IndicSUPERB"
  DESCRIPTION = "Kathbath read speech (AI4Bharat IndicSUPERB), Telugu part."
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Optional: the archives are downloaded from AI4Bharat's object store. To build offline, place
`transcripts_n2w.tar`, `train_audio.tar`, `valid_audio.tar`, `testkn_audio.tar` and
`testunk_audio.tar` (from .../indic-superb/kathbath/clean/) in `manual_dir`."""
  CITATION = """@inproceedings{javed2023indicsuperb,
  title = {IndicSUPERB: A Speech Processing Universal Performance Benchmark for Indian
    Languages},
  author = {Javed, Tahir and others},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year = {2023}
}"""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = base.manual_dir_or_none(dl_manager)
    local = {
        name: os.path.join(os.fspath(manual), name)
        for name in _ARCHIVES
        if manual is not None and os.path.isfile(os.path.join(os.fspath(manual), name))
    }
    missing = [name for name in _ARCHIVES if name not in local]
    downloaded = dl_manager.download({name: _URL + name for name in missing}) if missing else {}
    archives = [os.fspath(p) for p in {**local, **downloaded}.values()]
    roots = base.materialize(dl_manager, sorted(archives), member_filter=_telugu_member)
    transcripts: dict[str, list[str]] = {}
    audio_files: dict[str, dict[str, str]] = {}
    for path in base.walk_files(roots):
      located = _split_folder(path)
      if located is None:
        continue
      split = located[0]
      name = os.path.basename(path)
      if name.startswith("transcription") and name.endswith(".txt"):
        transcripts.setdefault(split, []).append(path)
      else:
        audio_files.setdefault(split, {})[os.path.splitext(name)[0]] = path
    if not transcripts:
      raise FileNotFoundError(f"no telugu/<split>/transcription*.txt in {archives}")
    return {
        split: self._generate_examples(transcripts[split], audio_files.get(split, {}))
        for split in sorted(transcripts)
    }

  def _generate_examples(self, transcripts: list[str], audio_files: dict[str, str]):
    for transcript in transcripts:
      for line in base.read_text_lines(transcript):
        file_name, _, text = line.partition("\t")
        stem = os.path.splitext(os.path.basename(file_name.strip()))[0]
        path = audio_files.get(stem)
        if path is None:
          logging.warning("%s: no audio for %s listed in %s; skipped", self.name, stem, transcript)
          continue
        fields = stem.split("-")
        example = self._example(
            stem,
            path,
            speaker=f"kathbath_{fields[1]}" if len(fields) >= 3 else "",
            gender=_GENDERS.get(fields[-1], "") if len(fields) >= 3 else "",
            transcript=text.strip(),
        )
        if example is not None:
          yield example

