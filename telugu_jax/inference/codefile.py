"""The `.tjc` code file: a codec's codes for one clip, compact, versioned and safe to load.

Layout (all integers little-endian):

    offset  size  field
    0       4     magic b"TJXC"
    4       1     format version (1)
    5       4     header length H (uint32)
    9       H     header: UTF-8 JSON object with
                    sample_rate      int, the codec's rate (16000)
                    num_samples      int, the original clip's length at that rate
                    num_quantizers   int, n_q
                    num_frames       int, frames
                    bits             int, bits per code (ceil(log2(codebook_size)))
                    config_hash      str, `inference.codec.config_hash` of the codec
                    source           str, optional: the encoded file's name
    9+H     ...   the codes `[n_q, frames]` in row-major order, each `bits` wide, packed
                  most-significant bit first (`numpy.packbits`), zero-padded to a whole byte.

Nothing is unpickled: reading parses JSON and unpacks bits. At 1024 codes (10 bits), 8 levels and
~200 frames/s this is 16 kbit/s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import numpy as np

MAGIC = b"TJXC"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")


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


def write(path: str, code_file: CodeFile, codebook_size: int) -> None:
  """Writes atomically (a temporary file renamed into place)."""
  codes = np.asarray(code_file.codes)
  if codes.ndim != 2:
    raise ValueError(f"expected codes [n_q, frames], got shape {codes.shape}")
  bits = bits_for(codebook_size)
  header = json.dumps({
      "sample_rate": int(code_file.sample_rate), "num_samples": int(code_file.num_samples),
      "num_quantizers": int(codes.shape[0]), "num_frames": int(codes.shape[1]), "bits": bits,
      "config_hash": code_file.config_hash, "source": code_file.source,
  }).encode()
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(_PREFIX.pack(MAGIC, VERSION, len(header)))
    f.write(header)
    f.write(pack(codes, bits))
  os.replace(tmp, path)


def read(path: str) -> CodeFile:
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < _PREFIX.size or data[:4] != MAGIC:
    raise CodeFileError(f"{path}: not a telugu-jax code file (bad magic)")
  _, version, header_length = _PREFIX.unpack_from(data)
  if version != VERSION:
    raise CodeFileError(f"{path}: format version {version}; this reader knows {VERSION}")
  try:
    header = json.loads(data[_PREFIX.size:_PREFIX.size + header_length].decode())
    n_q, frames, bits = header["num_quantizers"], header["num_frames"], header["bits"]
    sample_rate, num_samples = header["sample_rate"], header["num_samples"]
    config_hash = header["config_hash"]
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise CodeFileError(f"{path}: corrupted header ({e})") from e
  payload = data[_PREFIX.size + header_length:]
  if len(payload) != (n_q * frames * bits + 7) // 8:
    raise CodeFileError(f"{path}: truncated or corrupted: {len(payload)} bytes of codes, "
                        f"expected {(n_q * frames * bits + 7) // 8}")
  codes = unpack(payload, n_q * frames, bits).reshape(n_q, frames)
  return CodeFile(codes, sample_rate, num_samples, config_hash, header.get("source", ""))
