"""IndicVoices (AI4Bharat), Telugu part, from its Hugging Face parquet release."""

from __future__ import annotations

import logging
import os

import pyarrow.parquet as pq
import tensorflow_datasets as tfds

from telugu_jax.data.tfds_builders import base

_SPLITS = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}
_AUDIO_COLUMNS = ("audio_filepath", "audio")
_TEXT_COLUMNS = ("text", "normalized", "verbatim")


def _split_of(file_name: str) -> str | None:
  """`train-00003-of-00012.parquet` -> `train`; `valid-...` -> `validation`."""
  return _SPLITS.get(file_name.split("-", 1)[0].lower())


class IndicvoicesTe(base.TeluguSpeechBuilder):
  """IndicVoices Telugu: natural (read, extempore, conversational) Telugu speech, CC BY 4.0.

  The release on the Hugging Face hub (`ai4bharat/IndicVoices`) is gated: accept its terms while
  logged in, then download the Telugu parquet files and pass their folder as `manual_dir`:

    huggingface-cli download ai4bharat/IndicVoices --repo-type dataset \\
      --include 'telugu/*' --local-dir /data/manual/indicvoices
    # manual_dir=/data/manual/indicvoices/telugu

  Layout: `train-NNNNN-of-MMMMM.parquet` and `valid-NNNNN-of-MMMMM.parquet` (searched
  recursively), one row per utterance with an audio struct column (`audio_filepath` or
  `audio`: `{bytes, path}`), `text`, `speaker_id`, `gender` and more. Splits: `train` and
  `validation` (the corpus's `valid`).
  """

  name = "indicvoices_te"
  HOMEPAGE = "https://huggingface.co/datasets/ai4bharat/IndicVoices"
  DESCRIPTION = "IndicVoices (AI4Bharat), Telugu part."
  CITATION = """@inproceedings{javed2024indicvoices,
  title = {IndicVoices: Towards building an Inclusive Multilingual Speech Dataset for Indian
    Languages},
  author = {Javed, Tahir and others},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year = {2024}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Accept the terms of https://huggingface.co/datasets/ai4bharat/IndicVoices while logged in,
download the Telugu parquet files (`huggingface-cli download ai4bharat/IndicVoices
--repo-type dataset --include 'telugu/*' --local-dir DIR`) and use DIR/telugu as `manual_dir`."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    files: dict[str, list[str]] = {}
    for path in base.walk_files([manual]):
      name = os.path.basename(path)
      split = _split_of(name) if name.endswith(".parquet") else None
      if split is not None:
        files.setdefault(split, []).append(path)
    if not files:
      raise FileNotFoundError(f"{manual}: no train-*.parquet / valid-*.parquet files")
    return {split: self._generate_examples(paths) for split, paths in sorted(files.items())}

  def _generate_examples(self, paths: list[str]):
    for path in paths:
      parquet = pq.ParquetFile(path)
      columns = parquet.schema_arrow.names
      audio_column = next((c for c in _AUDIO_COLUMNS if c in columns), None)
      text_column = next((c for c in _TEXT_COLUMNS if c in columns), None)
      if audio_column is None:
        raise ValueError(f"{path}: no audio column ({_AUDIO_COLUMNS}); columns are {columns}")
      stem = os.path.splitext(os.path.basename(path))[0]
      row_index = 0
      for batch in parquet.iter_batches(batch_size=64):
        for row in batch.to_pylist():
          key = f"{stem}/{row_index}"
          row_index += 1
          cell = row[audio_column]
          data = cell.get("bytes") if isinstance(cell, dict) else None
          if not data:
            logging.warning("%s: skipping %s: no audio bytes in the row", self.name, key)
            continue
          example = self._example(
              key,
              data,
              speaker=str(row.get("speaker_id") or ""),
              gender=str(row.get("gender") or "").lower(),
              transcript=str(row.get(text_column) or "") if text_column else "",
          )
          if example is not None:
            yield example
