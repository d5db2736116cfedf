"""What the Telugu TFDS builders share: features, decoding, archives, manual files.

TensorFlow-free by construction (tensorflow-datasets is installed without TensorFlow here):

* features are `Tensor`/`Text`/`Scalar` (TFDS's `Audio` feature imports TensorFlow); audio is
  16 kHz mono int16 in `audio`, resampled at build time with the project's own decoder;
* archives are opened with Python's `zipfile`/`tarfile` (TFDS's `dl_manager.extract` and
  `iter_archive` go through `tf.io.gfile`); HTTP downloads use `dl_manager.download`, which
  needs no TensorFlow;
* builders are prepared with `file_format="array_record"` and read with `tfds.data_source`,
  which feeds grain directly (`as_dataset()` would need tf.data).

Every example has `audio` (int16 [T] at 16 kHz), `id`, `speaker`, `gender`, `transcript` and
`duration` (seconds). Undecodable files are logged and skipped, never fatal.
"""

from __future__ import annotations

import inspect
import logging
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from telugu_jax.data import audio

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

VALIDATION_FRACTION = 0.05
"""Share of recordings hashed into `validation` for corpora without an official split."""


def features() -> tfds.features.FeaturesDict:
  """The feature spec shared by all Telugu speech builders."""
  return tfds.features.FeaturesDict(
      {
          "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
          "id": tfds.features.Text(),
          "speaker": tfds.features.Text(),
          "gender": tfds.features.Text(),
          "transcript": tfds.features.Text(),
          "duration": tfds.features.Scalar(dtype=np.float32),
      }
  )


def is_archive(path: str | os.PathLike) -> bool:
  return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


def extract(
    archive: str | os.PathLike,
    destination: str | os.PathLike,
    member_filter: Callable[[str], bool] | None = None,
) -> str:
  """Extracts a zip or tar archive once (a `.done` marker makes reruns free).

  Args:
    archive: the archive file.
    destination: the folder to extract into.
    member_filter: keep only members whose archive path passes (e.g. one language of a
      multilingual archive).

  Returns:
    `destination`.
  """
  archive, destination = os.fspath(archive), os.fspath(destination)
  marker = destination + ".done"
  if os.path.exists(marker):
    return destination
  os.makedirs(destination, exist_ok=True)
  keep = member_filter or (lambda name: True)
  logging.info("Extracting %s to %s", archive, destination)
  if archive.lower().endswith(".zip"):
    with zipfile.ZipFile(archive) as z:
      z.extractall(destination, members=[n for n in z.namelist() if keep(n)])
  else:
    with tarfile.open(archive) as t:
      for member in t:
        if keep(member.name):
          t.extract(member, destination, filter="data")
  with open(marker, "w", encoding="utf-8"):
    pass
  return destination


def manual_dir_or_none(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """The manual folder if the user gave a non-empty one, else None."""
  try:
    return dl_manager.manual_dir
  except AssertionError:
    return None


def materialize(
    dl_manager: tfds.download.DownloadManager,
    paths: Iterable[str | os.PathLike],
    member_filter: Callable[[str], bool] | None = None,
) -> list[str]:
  """Folders to search: folders as they are, archives extracted under the download dir."""
  roots = []
  for path in paths:
    path = os.fspath(path)
    if os.path.isdir(path):
      roots.append(path)
    elif is_archive(path):
      name = os.path.basename(path)
      destination = os.path.join(os.fspath(dl_manager.download_dir), "telugu_jax_extracted", name)
      roots.append(extract(path, destination, member_filter))
  return roots


def walk_files(roots: Iterable[str]) -> Iterator[str]:
  """Every file below `roots`, in a deterministic order."""
  for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames.sort()
      for filename in sorted(filenames):
        yield os.path.join(dirpath, filename)


def read_text_lines(path: str) -> list[str]:
  """UTF-8 lines (BOM and surrounding whitespace stripped), empty lines dropped."""
  with open(path, encoding="utf-8-sig") as f:
    return [line.strip() for line in f if line.strip()]


class TeluguSpeechBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: shared features, decoding and TensorFlow-free plumbing."""

  VERSION = tfds.core.Version("1.0.0")
  HOMEPAGE = ""
  CITATION = ""
  DESCRIPTION = ""

  # TFDS 4.9.10 looks up `importlib_resources` (a Python < 3.9 backport) while locating a
  # builder's code (tensorflow/datasets#11212). Locating it from the class's own file avoids
  # that lookup and needs no extra package.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=features(),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
    )

  def _example(
      self,
      key: str,
      source: str | bytes | BinaryIO,
      *,
      speaker: str = "",
      gender: str = "",
      transcript: str = "",
  ) -> tuple[str, dict[str, Any]] | None:
    """Decodes one recording into an example; None (and a warning) if it cannot be decoded."""
    try:
      wave = audio.load_audio(source, audio.SAMPLE_RATE, name=key)
    except audio.AudioDecodeError as e:
      logging.warning("%s: skipping %s", self.name, e)
      return None
    pcm = audio.float_to_pcm16(wave)
    return key, {
        "audio": pcm,
        "id": key,
        "speaker": speaker,
        "gender": gender,
        "transcript": transcript,
        "duration": np.float32(pcm.size / audio.SAMPLE_RATE),
    }

