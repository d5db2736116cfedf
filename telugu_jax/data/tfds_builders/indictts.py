"""IndicTTS (IIT Madras), Telugu male and female voices."""

from __future__ import annotations

import logging
import os
import re

import tensorflow_datasets as tfds

from telugu_jax.data import shards
from telugu_jax.data.tfds_builders import base

# A festival prompt line: ( train_telugumale_00001 " text " )
_PROMPT = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)$')


def _gender_of(path: str) -> str:
  parts = [p.lower() for p in path.replace(os.sep, "/").split("/")]
  for gender in ("female", "male"):  # "female" first: "male" is a substring of it.
    if gender in parts:
      return gender
  return ""


class IndicttsTe(base.TeluguSpeechBuilder):
  """IndicTTS Telugu: studio TTS recordings of one male and one female native speaker.

  The IndicTTS database (IIT Madras) is distributed after registration and acceptance of its
  licence at https://www.iitm.ac.in/donlab/indictts/database, so this builder needs
  `manual_dir`: put the Telugu download there (zip/tar archives or extracted folders).

  Layout: for each voice a folder such as `Telugu/male/mono/` holding `txt.done.data` (festival
  prompts, `( train_telugumale_00001 " <sentence> " )` per line) and `wav/<id>.wav`. The voice's
  gender comes from the `male`/`female` folder name; the speaker is `indictts_te_<gender>`.
  There is no official split: 5% of the ids go to `validation` by hash.
  """

  name = "indictts_te"
  HOMEPAGE = "https://www.iitm.ac.in/donlab/indictts/database"
  DESCRIPTION = "IndicTTS database (IIT Madras), Telugu."
  CITATION = """@inproceedings{baby2016resources,
  title = {Resources for Indian languages},
  author = {Baby, Arun and Thomas, Anju Leela and Nishanthi, N. L. and {TTS Consortium}},
  booktitle = {CBBLR workshop, International Conference on Text, Speech and Dialogue},
  year = {2016}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Register at https://www.iitm.ac.in/donlab/indictts/database, download the Telugu data and
place the archives (or the extracted folders with `txt.done.data` and `wav/`) in `manual_dir`."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = dl_manager.manual_dir
    roots = base.materialize(dl_manager, sorted(manual.iterdir()))
    prompts = [p for p in base.walk_files(roots) if os.path.basename(p) == "txt.done.data"]
    if not prompts:
      raise FileNotFoundError(f"{manual}: no txt.done.data found; see the instructions")
    return {
        "train": self._generate_examples(prompts, "train"),
        "validation": self._generate_examples(prompts, "validation"),
    }

  def _generate_examples(self, prompts: list[str], split: str):
    for prompt_file in prompts:
      folder = os.path.dirname(prompt_file)
      gender = _gender_of(folder)
      for line in base.read_text_lines(prompt_file):
        match = _PROMPT.match(line)
        if match is None:
          logging.warning("%s: %s: unparsable prompt line %r", self.name, prompt_file, line)
          continue
        utt_id, text = match.group(1), match.group(2).strip()
        if shards.split_for_key(utt_id, base.VALIDATION_FRACTION) != split:
          continue
        example = self._example(
            utt_id,
            os.path.join(folder, "wav", utt_id + ".wav"),
            speaker=f"indictts_te_{gender}" if gender else "indictts_te",
            gender=gender,
            transcript=text,
        )
        if example is not None:
          yield example
