"""Encodes audio files to compact code files (`.tjc`) and decodes them back to WAV.

    python tools/codec_files.py encode --checkpoint=DIR speech.mp3 speech.tjc
    python tools/codec_files.py encode --checkpoint=DIR clips/ codes/      # a whole folder
    python tools/codec_files.py decode --checkpoint=DIR codes/ decoded/

`--checkpoint` is a converted checkpoint or a training workdir. Audio may be WAV, FLAC, MP3 or
OGG at any sample rate, mono or stereo (channels are averaged, then resampled to 16 kHz). A
folder is processed recursively, mirroring its layout; files that cannot be read (or, when
decoding, fail a check) are skipped and listed at the end (the exit code is then 1). The code
file format is documented in `telugu_jax/inference/codefile.py`; decoding verifies each file's
checksum and header, and that it was made by a codec of the same architecture, sample rate and
number of levels, with as many frames as that codec makes of the clip's original length.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import soundfile
from tqdm import tqdm


def _pairs(source: str, target: str, extensions: tuple[str, ...], new_ext: str):
  if os.path.isfile(source):
    return [(source, target)]
  if not os.path.isdir(source):
    raise FileNotFoundError(f"{source}: no such file or folder")
  pairs = []
  for folder, _, files in sorted(os.walk(source)):
    for name in sorted(files):
      if name.lower().endswith(extensions):
        relative = os.path.relpath(os.path.join(folder, name), source)
        pairs.append((os.path.join(source, relative),
                      os.path.join(target, os.path.splitext(relative)[0] + new_ext)))
  return pairs


def encode_file(codec, source: str, target: str) -> float:
  from telugu_jax.data.audio import load_audio
  from telugu_jax.inference import codefile

  wave = load_audio(source, codec.sample_rate)
  if codec.num_frames(wave.size) < 1:
    raise ValueError(f"{source}: {wave.size} samples, shorter than one codec frame")
  codes = codec.encode(wave[None])[0]
  codefile.write(target, codefile.CodeFile(codes, codec.sample_rate, wave.size, codec.config_hash,
                                            os.path.basename(source)), codec.codebook_size)
  return wave.size / codec.sample_rate


def decode_file(codec, source: str, target: str) -> float:
  from telugu_jax.inference import codefile

  code_file = codefile.read(source, codec)
  wave = codec.decode(code_file.codes[None])[0]
  wave = wave[: code_file.num_samples]
  wave = np.pad(wave, (0, code_file.num_samples - wave.size))
  tmp = f"{target}.tmp-{os.getpid()}.wav"
  soundfile.write(tmp, wave, code_file.sample_rate, subtype="PCM_16")
  os.replace(tmp, target)
  return wave.size / code_file.sample_rate


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=("encode", "decode"))
  parser.add_argument("input", help="a file or a folder")
  parser.add_argument("output", help="a file (for a file input) or a folder")
  parser.add_argument("--checkpoint", required=True, help="converted checkpoint or training workdir")
  args = parser.parse_args(argv)

  from telugu_jax.data.audio import AUDIO_EXTENSIONS
  from telugu_jax.inference import load_codec

  if args.command == "encode":
    pairs = _pairs(args.input, args.output, AUDIO_EXTENSIONS, ".tjc")
    work = encode_file
  else:
    pairs = _pairs(args.input, args.output, (".tjc",), ".wav")
    work = decode_file
  if not pairs:
    print(f"error: no input files under {args.input}", file=sys.stderr)
    return 1
  codec = load_codec(args.checkpoint)
  failures, seconds = [], 0.0
  for source, target in tqdm(pairs, desc=args.command, unit="file", disable=len(pairs) == 1):
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    try:
      seconds += work(codec, source, target)
    except (ValueError, OSError) as e:  # AudioDecodeError and CodeFileError are ValueErrors.
      failures.append(f"{source}: {e}")
  print(f"{args.command}d {len(pairs) - len(failures)} of {len(pairs)} files "
        f"({seconds:.1f} s of audio) into {args.output}")
  for failure in failures:
    print(f"skipped {failure}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
