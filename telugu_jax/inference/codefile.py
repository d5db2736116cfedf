"""The `.tjc` code file: a codec's codes for one clip: compact, versioned, checksummed, safe.

Layout of format version 2 (all integers little-endian):

    offset     size  field
    0          4     magic b"TJXC"
    4          1     format version (2)
    5          4     header length H (uint32)
    9          H     header: UTF-8 JSON object with exactly these fields
                       sample_rate      int, the codec's rate (16000)
                       num_samples      int >= 1, the original clip's length at that rate
                       num_quantizers   int >= 1, n_q
                       num_frames       int >= 1, frames
                       codebook_size    int >= 1, codes lie in [0, codebook_size)
                       bits             int, bits per code: ceil(log2(codebook_size)), at least 1
                       config_hash      str, `inference.codec.config_hash` of the codec
                       source           str, optional: the encoded file's name
    9+H        P     the codes `[n_q, frames]` in row-major order, each `bits` wide, packed
                     most-significant bit first (`numpy.packbits`), zero-padded to a whole byte:
                     P = ceil(n_q * frames * bits / 8)
    9+H+P      4     CRC-32 (`zlib.crc32`, uint32) of all the bytes before it

Version 1 (still read, no longer written) is the same without `codebook_size` and without the
CRC-32, so a flipped bit in it can go unnoticed: only the structural checks below apply.

Reading checks, and names the file and the problem in a `CodeFileError` when one fails: the
magic, the version, the checksum (version 2), that the header is a JSON object with exactly the
fields above, each of the right type and in range, that `bits` fits `codebook_size`, that the
payload has exactly P bytes and that every code lies below `codebook_size`. Given the codec that
will decode the file, `read` also checks that the file was made by that codec's architecture
(configuration hash), at its sample rate, with its number of levels and codebook size, and that
`num_frames` is what the codec makes of `num_samples` samples.

Nothing is unpickled: reading parses JSON and unpacks bits. At 1024 codes (10 bits), 8 levels and
~200 frames/s this is 16 kbit/s (`configs/codec.py:lowrate`, 50 frames/s: 4 kbit/s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from typing import Any

import numpy as np

MAGIC = b"TJXC"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<4sBI")
_CRC = struct.Struct("<I")

_INT_RANGES = {
    "sample_rate": (1, 10_000_000),
    "num_samples": (1, 2**48),
    "num_quantizers": (1, 1024),
    "num_frames": (1, 2**40),
    "codebook_size": (1, 2**31),
    "bits": (1, 31),
}
_FIELDS = {
    1: ("sample_rate", "num_samples", "num_quantizers", "num_frames", "bits", "config_hash"),
    2: ("sample_rate", "num_samples", "num_quantizers", "num_frames", "codebook_size", "bits",
        "config_hash"),
}
_OPTIONAL_FIELDS = ("source",)


class CodeFileError(ValueError):
  """A code file is malformed; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class CodeFile:
  codes: np.ndarray  # int32 [n_q, frames]
  sample_rate: int
  num_samples: int
  config_hash: str
  source: str = ""


def bits_for(codebook_size: int) -> int:
  return max(1, int(np.ceil(np.log2(codebook_size))))


def pack(codes: np.ndarray, bits: int) -> bytes:
  codes = np.asarray(codes, np.int64).reshape(-1)
  if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
    raise ValueError(f"codes must lie in [0, {1 << bits}) to pack in {bits} bits")
  shifts = np.arange(bits - 1, -1, -1)
  return np.packbits(((codes[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def unpack(data: bytes, count: int, bits: int) -> np.ndarray:
  flat = np.unpackbits(np.frombuffer(data, np.uint8))[: count * bits].reshape(count, bits)
  return (flat.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(axis=1).astype(np.int32)


def _payload_size(header: dict[str, Any]) -> int:
  return (header["num_quantizers"] * header["num_frames"] * header["bits"] + 7) // 8


def _check_header(path: str, header: Any, version: int) -> None:
  """Raises `CodeFileError` unless `header` is a valid header of format `version`."""
  if not isinstance(header, dict):
    raise CodeFileError(f"{path}: invalid header (a JSON {type(header).__name__}, not an object)")
  required = _FIELDS[version]
  missing = [name for name in required if name not in header]
  unknown = sorted(set(header) - set(required) - set(_OPTIONAL_FIELDS))
  if missing or unknown:
    raise CodeFileError(f"{path}: invalid header (missing fields {missing}, "
                        f"unknown fields {unknown})")
  for name in required:
    value = header[name]
    if name == "config_hash":
      if not isinstance(value, str) or not value:
        raise CodeFileError(f"{path}: invalid header (config_hash {value!r} is not a "
                            "non-empty string)")
      continue
    low, high = _INT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
      raise CodeFileError(f"{path}: invalid header ({name} {value!r} is not an integer in "
                          f"[{low}, {high}])")
  if not isinstance(header.get("source", ""), str):
    raise CodeFileError(f"{path}: invalid header (source {header['source']!r} is not a string)")
  if version >= 2 and header["bits"] != bits_for(header["codebook_size"]):
    raise CodeFileError(f"{path}: invalid header ({header['bits']} bits per code do not fit a "
                        f"codebook of {header['codebook_size']}: expected "
                        f"{bits_for(header['codebook_size'])})")


def write(path: str, code_file: CodeFile, codebook_size: int) -> None:
  """Writes a format-version-2 file atomically (a temporary file renamed into place).

  Args:
    path: the `.tjc` file to write.
    code_file: the codes `[n_q, frames]` and what to record about them.
    codebook_size: the codec's codebook size: every code must lie below it.

  Raises:
    ValueError: the codes are not `[n_q, frames]` or lie outside the codebook; or
      `CodeFileError` (a ValueError): a header field is out of range (so the file would not
      read back).
  """
  codes = np.asarray(code_file.codes)
  if codes.ndim != 2:
    raise ValueError(f"expected codes [n_q, frames], got shape {codes.shape}")
  if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
    raise ValueError(f"codes must lie in [0, {codebook_size}), got [{codes.min()}, {codes.max()}]")
  header = {
      "sample_rate": int(code_file.sample_rate), "num_samples": int(code_file.num_samples),
      "num_quantizers": int(codes.shape[0]), "num_frames": int(codes.shape[1]),
      "codebook_size": int(codebook_size), "bits": bits_for(codebook_size),
      "config_hash": code_file.config_hash, "source": code_file.source,
  }
  _check_header(path, header, VERSION)
  encoded = json.dumps(header).encode()
  body = _PREFIX.pack(MAGIC, VERSION, len(encoded)) + encoded + pack(codes, header["bits"])
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(body)
    f.write(_CRC.pack(zlib.crc32(body)))
  os.replace(tmp, path)


def _reject_constant(name: str) -> None:
  raise ValueError(f"{name} is not a JSON number")


def _check_codec(path: str, header: dict[str, Any], codes: np.ndarray, codec: Any) -> None:
  """Raises `CodeFileError` unless the file can be decoded by `codec` (see `read`)."""
  if header["config_hash"] != codec.config_hash:
    raise CodeFileError(f"{path}: made by a codec with configuration hash "
                        f"{header['config_hash']}, this checkpoint's is {codec.config_hash}")
  if header["sample_rate"] != codec.sample_rate:
    raise CodeFileError(f"{path}: sample rate {header['sample_rate']} Hz in the header, the "
                        f"codec runs at {codec.sample_rate} Hz")
  if header["num_quantizers"] != codec.num_quantizers:
    raise CodeFileError(f"{path}: {header['num_quantizers']} codebook levels in the header, the "
                        f"codec has {codec.num_quantizers}")
  size = header.get("codebook_size")  # Version 1 headers lack it.
  if size not in (None, codec.codebook_size) or header["bits"] != bits_for(codec.codebook_size):
    described = "" if size is None else f"codebook size {size}, "
    raise CodeFileError(f"{path}: {described}{header['bits']} bits per code in the header, the "
                        f"codec's codebook has {codec.codebook_size} codes "
                        f"({bits_for(codec.codebook_size)} bits)")
  if codes.size and codes.max() >= codec.codebook_size:
    raise CodeFileError(f"{path}: code {codes.max()} outside the codec's codebook of "
                        f"{codec.codebook_size}")
  expected_frames = codec.num_frames(header["num_samples"])
  if header["num_frames"] != expected_frames:
    raise CodeFileError(f"{path}: {header['num_frames']} frames in the header, but the codec "
                        f"makes {expected_frames} of the original {header['num_samples']} samples")


def read(path: str, codec: Any = None) -> CodeFile:
  """Reads a code file of format version 1 or 2, checking everything the module docstring lists.

  Args:
    path: the `.tjc` file.
    codec: the codec that will decode the codes (an `inference.CodecModel`, or anything with
      `config_hash`, `sample_rate`, `num_quantizers`, `codebook_size` and
      `num_frames(num_samples)`), to check that the file fits it; None checks the file alone.

  Returns:
    The codes (int32 `[n_q, frames]`) and the header's sample rate, length, hash and source.

  Raises:
    CodeFileError: the file is malformed, corrupted, truncated or made for another codec; the
      message names the file and the problem.
  """
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < _PREFIX.size or data[:4] != MAGIC:
    raise CodeFileError(f"{path}: not a telugu-jax code file (bad magic)")
  _, version, header_length = _PREFIX.unpack_from(data)
  if version not in READABLE_VERSIONS:
    raise CodeFileError(f"{path}: format version {version}; this reader knows "
                        f"{', '.join(map(str, READABLE_VERSIONS))}")
  end = len(data)
  if version >= 2:
    end -= _CRC.size
    if end < _PREFIX.size + header_length:
      raise CodeFileError(f"{path}: truncated: {len(data)} bytes cannot hold the "
                          f"{header_length}-byte header and the checksum")
    (stored,) = _CRC.unpack_from(data, end)
    computed = zlib.crc32(memoryview(data)[:end])
    if stored != computed:
      raise CodeFileError(f"{path}: checksum mismatch (stored {stored:08x}, computed "
                          f"{computed:08x}): the file is corrupted or truncated")
  try:
    header = json.loads(data[_PREFIX.size:_PREFIX.size + header_length].decode(),
                        parse_constant=_reject_constant)
  except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError.
    raise CodeFileError(f"{path}: corrupted header ({e})") from e
  _check_header(path, header, version)
  payload = data[_PREFIX.size + header_length:end]
  if len(payload) != _payload_size(header):
    raise CodeFileError(f"{path}: truncated or corrupted: {len(payload)} bytes of codes, "
                        f"expected {_payload_size(header)}")
  n_q, frames = header["num_quantizers"], header["num_frames"]
  codes = unpack(payload, n_q * frames, header["bits"]).reshape(n_q, frames)
  if version >= 2 and codes.max() >= header["codebook_size"]:
    raise CodeFileError(f"{path}: corrupted codes: {codes.max()} outside the codebook of "
                        f"{header['codebook_size']}")
  if codec is not None:
    _check_codec(path, header, codes, codec)
  return CodeFile(codes, header["sample_rate"], header["num_samples"], header["config_hash"],
                  header.get("source", ""))
