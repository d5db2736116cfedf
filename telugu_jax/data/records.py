"""The record format of telugu-jax ArrayRecord shards, and writers for it.

One record holds named numpy arrays plus JSON metadata:

```
b"TJR1" | uint32 LE header length | header (UTF-8 JSON) | array payload
header = {"meta": {...}, "arrays": {name: [dtype, shape, byte_offset, nbytes]}, "crc32": int}
```

`crc32` covers the payload, so truncated or bit-flipped records are detected and reported as
`CorruptRecordError` rather than fed to a model. Three kinds of records are used:

* audio (`kind="audio"`): `pcm` int16 `[T]` at 16 kHz; meta `key`, `source`, `speaker`,
  `emotion`, `transcript`, `duration`, `sample_rate`, `split`, `segment`, `num_segments` and
  level statistics (see `shards.py`).
* codes (`kind="codes"`): `codes` int16/int32 `[n_q, frames]`; meta `speaker_id`, `emotion_id`
  and anything else the encoder wants to keep (`key`, `source`, `transcript`).
* pairs (`kind="pair"`): `question` and `answer` codes `[n_q, frames]`; meta `speaker_id`,
  `emotion_id`.

Shards are written with `group_size:1` so that grain can read any record directly, and
atomically (a temporary name, renamed on close), so a crashed writer never leaves a shard that
looks finished.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from array_record.python import array_record_module

MAGIC = b"TJR1"
SHARD_SUFFIX = ".arrayrecord"
WRITER_OPTIONS = "group_size:1"

EMOTION_IDS = {
    "neutral": 0,
    "happy": 1,
    "laugh": 2,
    "excited": 3,
    "empathy": 4,
    "surprise": 5,
    "thinking": 6,
    "telugu_heavy": 7,
    "telugu_mild": 8,
}
"""Emotion vocabulary of the S2S model (ids as in the original `s2s_transformer.py`)."""

SPEAKER_IDS = {"male_young": 0, "male_mature": 1, "female_young": 2, "female_professional": 3}
"""Speaker vocabulary of the S2S model (ids as in the original)."""

_ALLOWED_DTYPES = frozenset({"int16", "int32", "int64", "float32", "uint8"})


class CorruptRecordError(ValueError):
  """A record that cannot be decoded: wrong magic, truncated, bad header or checksum."""


def encode_record(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
  """Serialises named arrays and JSON-able metadata into one record.

  Args:
    arrays: name -> array; dtypes int16, int32, int64, float32 or uint8 (stored little endian).
    meta: JSON-serialisable metadata (strings are stored as UTF-8, Telugu included).

  Returns:
    The record bytes.
  """
  layout = {}
  chunks = []
  offset = 0
  for name, array in arrays.items():
    array = np.ascontiguousarray(array)
    if array.dtype.name not in _ALLOWED_DTYPES:
      raise ValueError(f"array {name!r}: dtype {array.dtype} not storable in a record")
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    layout[name] = [array.dtype.name, list(array.shape), offset, len(data)]
    chunks.append(data)
    offset += len(data)
  payload = b"".join(chunks)
  header = json.dumps(
      {"meta": dict(meta), "arrays": layout, "crc32": zlib.crc32(payload)},
      ensure_ascii=False,
      separators=(",", ":"),
  ).encode("utf-8")
  return MAGIC + struct.pack("<I", len(header)) + header + payload


def _parse_header(data: bytes) -> tuple[dict[str, Any], int]:
  if len(data) < 8 or data[:4] != MAGIC:
    raise CorruptRecordError("not a telugu-jax record (bad magic)")
  (header_len,) = struct.unpack("<I", data[4:8])
  if 8 + header_len > len(data):
    raise CorruptRecordError("record truncated inside its header")
  try:
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CorruptRecordError(f"unreadable record header ({e})") from e
  if not isinstance(header, dict) or not {"meta", "arrays", "crc32"} <= header.keys():
    raise CorruptRecordError("record header lacks meta/arrays/crc32")
  return header, 8 + header_len


def decode_meta(data: bytes) -> dict[str, Any]:
  """Reads only a record's metadata (no checksum check of the payload)."""
  header, _ = _parse_header(data)
  return header["meta"]


def decode_record(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Inverse of `encode_record`; verifies the payload checksum.

  Args:
    data: record bytes.

  Returns:
    `(arrays, meta)`.

  Raises:
    CorruptRecordError: the bytes are not an intact record.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise CorruptRecordError(f"expected record bytes, got {type(data).__name__}")
  data = bytes(data)
  header, start = _parse_header(data)
  payload = memoryview(data)[start:]
  if zlib.crc32(payload) != header["crc32"]:
    raise CorruptRecordError("payload checksum mismatch (truncated or corrupted record)")
  arrays = {}
  for name, spec in header["arrays"].items():
    try:
      dtype_name, shape, offset, nbytes = spec
      dtype = np.dtype(dtype_name)
      if offset < 0 or offset + nbytes > len(payload):
        raise CorruptRecordError(f"array {name!r} runs past the end of the record")
      array = np.frombuffer(payload[offset : offset + nbytes], dtype=dtype.newbyteorder("<"))
      arrays[name] = array.reshape(shape).astype(dtype, copy=False)
    except CorruptRecordError:
      raise
    except (TypeError, ValueError) as e:
      raise CorruptRecordError(f"bad layout of array {name!r} ({e})") from e
  return arrays, header["meta"]


class ShardWriter:
  """Writes records to one ArrayRecord shard, atomically.

  Records go to `<path>.tmp-<pid>`; `close()` renames it to `path`. Used as a context manager,
  an exception inside the block discards the temporary file instead.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._tmp_path = f"{self.path}.tmp-{os.getpid()}"
    self._writer = array_record_module.ArrayRecordWriter(self._tmp_path, WRITER_OPTIONS)
    self.num_records = 0

  def write(self, record: bytes) -> None:
    """Appends one record (bytes from `encode_record`)."""
    self._writer.write(record)
    self.num_records += 1

  def close(self) -> None:
    """Finishes the shard and moves it to its final name."""
    self._writer.close()
    os.replace(self._tmp_path, self.path)

  def abort(self) -> None:
    """Drops the partial shard."""
    self._writer.close()
    if os.path.exists(self._tmp_path):
      os.remove(self._tmp_path)

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def read_records(path: str | os.PathLike) -> list[bytes]:
  """All raw records of one shard, in order (for tools and tests; pipelines use grain)."""
  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  try:
    return list(reader.read_all())
  finally:
    reader.close()


def read_first_records(path: str | os.PathLike, count: int) -> list[bytes]:
  """The first `count` raw records of one shard (fewer if it holds fewer)."""
  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  try:
    n = min(count, reader.num_records())
    return list(reader.read(list(range(n)))) if n else []
  finally:
    reader.close()


def shard_lengths(paths: Sequence[str | os.PathLike]) -> list[int]:
  """Number of records in each shard."""
  lengths = []
  for path in paths:
    reader = array_record_module.ArrayRecordReader(os.fspath(path))
    try:
      lengths.append(reader.num_records())
    finally:
      reader.close()
  return lengths


def list_shards(directory: str | os.PathLike, split: str | None = None) -> list[str]:
  """Sorted shard paths in `directory`, optionally only those of `split` (name prefix)."""
  directory = os.fspath(directory)
  names = sorted(
      n
      for n in os.listdir(directory)
      if n.endswith(SHARD_SUFFIX) and (split is None or n.startswith(f"{split}-"))
  )
  return [os.path.join(directory, n) for n in names]


def code_record(
    codes: np.ndarray, *, speaker_id: int = 0, emotion_id: int = 0, **meta: Any
) -> bytes:
  """One code sequence `[n_q, frames]` for S2S stage 1 (audio LM) and stage 3 training."""
  codes = _check_codes("codes", codes)
  return encode_record(
      {"codes": codes},
      {"kind": "codes", "speaker_id": int(speaker_id), "emotion_id": int(emotion_id), **meta},
  )


def pair_record(
    question: np.ndarray,
    answer: np.ndarray,
    *,
    speaker_id: int = 0,
    emotion_id: int = 0,
    **meta: Any,
) -> bytes:
  """One question->answer pair of code sequences `[n_q, frames]` for S2S stage 2."""
  question = _check_codes("question", question)
  answer = _check_codes("answer", answer)
  if question.shape[0] != answer.shape[0]:
    raise ValueError(f"question has {question.shape[0]} quantizers, answer {answer.shape[0]}")
  return encode_record(
      {"question": question, "answer": answer},
      {"kind": "pair", "speaker_id": int(speaker_id), "emotion_id": int(emotion_id), **meta},
  )


def _check_codes(name: str, codes: np.ndarray) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(
        f"{name}: expected integer codes [n_q, frames], got {codes.dtype} {codes.shape}"
    )
  if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.int16).max):
    raise ValueError(f"{name}: code values outside [0, 32767]")
  return codes.astype(np.int16)


def write_code_shards(
    examples: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    split: str = "train",
    records_per_shard: int = 4096,
) -> list[str]:
  """Writes code or pair examples to `{split}-NNNNN.arrayrecord` shards.

  Each example is a mapping with either `codes` (`[n_q, frames]`) or `question` and `answer`,
  plus optional `speaker_id`, `emotion_id` (ints, see `SPEAKER_IDS`/`EMOTION_IDS`) and any other
  JSON-able metadata (e.g. `key`, `transcript`). `tools/encode_corpus.py` feeds this from the
  codec's encoder.

  Args:
    examples: the examples, in the order they should be stored.
    output_dir: the directory for the shards (created if needed).
    split: the shard name prefix, e.g. `train` or `validation`.
    records_per_shard: records per shard file.

  Returns:
    The shard paths written.
  """
  if records_per_shard <= 0:
    raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
  paths = []
  writer = None
  for example in examples:
    example = dict(example)
    speaker_id = int(example.pop("speaker_id", 0))
    emotion_id = int(example.pop("emotion_id", 0))
    if "codes" in example:
      codes = example.pop("codes")
      record = code_record(codes, speaker_id=speaker_id, emotion_id=emotion_id, **example)
    elif "question" in example and "answer" in example:
      question, answer = example.pop("question"), example.pop("answer")
      record = pair_record(
          question, answer, speaker_id=speaker_id, emotion_id=emotion_id, **example
      )
    else:
      raise ValueError(f"example has neither 'codes' nor 'question'/'answer': {sorted(example)}")
    if writer is None or writer.num_records >= records_per_shard:
      if writer is not None:
        writer.close()
      path = os.path.join(os.fspath(output_dir), f"{split}-{len(paths):05d}{SHARD_SUFFIX}")
      writer = ShardWriter(path)
      paths.append(path)
    writer.write(record)
  if writer is not None:
    writer.close()
  return paths
