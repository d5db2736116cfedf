"""The bundled sample Telugu corpus: synthetic speech for smoke tests and data-free training.

`assets/sample_corpus/` holds a few minutes of Telugu speech in six synthetic voices (16 kHz
FLAC), made offline with `espeak-ng -v te` and voice variants at different pitch and speed,
plus `metadata.tsv` (a `build_shards` manifest: path, speaker, emotion, text, split, and the
synthesis settings) and `sentences_te.txt` (the Telugu sentences, one per line).

It is no substitute for real speech (espeak is a formant synthesiser), but it lets every
training loop, the pipelines and the tools run end to end with no data configured:
`sample_shards()` turns it into ArrayRecord shards once and caches them.

Regenerate or extend it with `python tools/make_sample_corpus.py` (needs `espeak-ng`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np
import soundfile
import tqdm

from telugu_jax.data import audio
from telugu_jax.data import records
from telugu_jax.data import shards

CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "sample_corpus")
SENTENCES_NAME = "sentences_te.txt"
METADATA_NAME = "metadata.tsv"
METADATA_COLUMNS = ("path", "speaker", "emotion", "text", "split", "voice", "pitch", "speed")


@dataclasses.dataclass(frozen=True)
class Voice:
  """An espeak-ng voice: `-v te+<variant> -p <pitch> -s <speed>`."""

  name: str  # speaker name stored in the records
  variant: str  # espeak-ng variant (a file in espeak-ng-data/voices/!v)
  pitch: int  # 0..99
  speed: int  # words per minute


VOICES = (
    Voice("espeak_te_m1", "m1", 38, 150),
    Voice("espeak_te_m3", "m3", 50, 165),
    Voice("espeak_te_m7", "m7", 28, 140),
    Voice("espeak_te_f2", "f2", 66, 155),
    Voice("espeak_te_f4", "f4", 76, 145),
    Voice("espeak_te_f5", "f5", 60, 170),
)

UTTERANCES_PER_VOICE = 12


def read_sentences(path: str | os.PathLike) -> list[str]:
  """Non-empty, stripped lines of a UTF-8 text file."""
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def voice_sentences(num_sentences: int, voice_index: int, per_voice: int) -> list[int]:
  """Sentence indices a voice reads: a window of `per_voice` starting at `7 * voice_index`.

  Consecutive voices overlap, so the corpus has the same sentence in several voices as well as
  sentences only some voices read.
  """
  return [(7 * voice_index + j) % num_sentences for j in range(min(per_voice, num_sentences))]


def synthesize(text: str, voice: Voice, sample_rate: int = audio.SAMPLE_RATE) -> np.ndarray:
  """Speaks Telugu `text` with espeak-ng; returns mono float32 at `sample_rate`.

  Raises:
    FileNotFoundError: `espeak-ng` is not installed (`apt-get install espeak-ng`).
    RuntimeError: espeak-ng failed; the message includes its stderr.
  """
  if shutil.which("espeak-ng") is None:
    raise FileNotFoundError("espeak-ng not found: install it, e.g. `apt-get install espeak-ng`")
  with tempfile.TemporaryDirectory() as tmp:
    wav_path = os.path.join(tmp, "out.wav")
    command = [
        "espeak-ng", "-v", f"te+{voice.variant}", "-p", str(voice.pitch), "-s", str(voice.speed),
        "-w", wav_path, text,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"espeak-ng failed ({result.returncode}) for {text!r}: {result.stderr}")
    return audio.load_audio(wav_path, sample_rate)


def make_corpus(
    output_dir: str | os.PathLike = CORPUS_DIR,
    *,
    sentences: Sequence[str] | None = None,
    voices: Sequence[Voice] = VOICES,
    per_voice: int = UTTERANCES_PER_VOICE,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict[str, str]]:
  """Synthesises the corpus into `output_dir` and writes its `metadata.tsv`.

  Existing FLAC files are kept unless `overwrite`, so adding sentences or voices and running
  again only synthesises what is new; FLAC files no longer listed are removed. Each voice's
  last utterance is its validation clip.

  Args:
    output_dir: corpus folder; `sentences_te.txt` is read from (and written to) it.
    sentences: the Telugu sentences (default: those in `output_dir/sentences_te.txt`).
    voices: the voices to use.
    per_voice: utterances per voice.
    overwrite: re-synthesise existing files.
    progress: show a progress bar.

  Returns:
    The metadata rows written.
  """
  output_dir = os.fspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  sentences_path = os.path.join(output_dir, SENTENCES_NAME)
  if sentences is None:
    sentences = read_sentences(sentences_path)
  else:
    with open(sentences_path, "w", encoding="utf-8") as f:
      f.write("".join(s.strip() + "\n" for s in sentences))
  jobs = []
  for v, voice in enumerate(voices):
    indices = voice_sentences(len(sentences), v, per_voice)
    for position, s in enumerate(indices):
      rel = f"{voice.name}/{voice.name}_{s:03d}.flac"
      split = "validation" if position == len(indices) - 1 else "train"
      jobs.append((rel, voice, sentences[s], split))
  rows = []
  bar = tqdm.tqdm(jobs, desc="espeak-ng", unit="clip", disable=not progress)
  for rel, voice, text, split in bar:
    path = os.path.join(output_dir, rel)
    if overwrite or not os.path.isfile(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      wave = synthesize(text, voice)
      soundfile.write(path, wave, audio.SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    rows.append(
        {
            "path": rel,
            "speaker": voice.name,
            "emotion": "neutral",
            "text": text,
            "split": split,
            "voice": f"te+{voice.variant}",
            "pitch": str(voice.pitch),
            "speed": str(voice.speed),
        }
    )
  wanted = {os.path.normpath(os.path.join(output_dir, row["path"])) for row in rows}
  for dirpath, _, filenames in os.walk(output_dir):
    for filename in filenames:
      path = os.path.normpath(os.path.join(dirpath, filename))
      if filename.endswith(".flac") and path not in wanted:
        os.remove(path)  # a clip of an earlier corpus layout, no longer listed
  with open(os.path.join(output_dir, METADATA_NAME), "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, METADATA_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  return rows


def _default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "telugu_jax", "sample_corpus")


def _corpus_fingerprint(corpus_dir: str) -> str:
  h = hashlib.sha256(shards.SIDECAR_FORMAT.encode())
  with open(os.path.join(corpus_dir, METADATA_NAME), "rb") as f:
    h.update(f.read())
  return h.hexdigest()[:16]


def sample_shards(
    cache_dir: str | os.PathLike | None = None, *, corpus_dir: str | os.PathLike = CORPUS_DIR
) -> dict[str, list[str]]:
  """ArrayRecord shards of the bundled corpus, built on first use and cached.

  The shards live in `<cache_dir>/<fingerprint of metadata.tsv>/`, built into a temporary
  folder and renamed, so concurrent callers and interrupted builds are safe.

  Args:
    cache_dir: where to keep them (default `$XDG_CACHE_HOME/telugu_jax/sample_corpus` or
      `~/.cache/telugu_jax/sample_corpus`).
    corpus_dir: the corpus folder (default: the bundled one).

  Returns:
    `{"train": [shard paths], "validation": [shard paths]}`.
  """
  corpus_dir = os.fspath(corpus_dir)
  cache_dir = os.fspath(cache_dir) if cache_dir is not None else _default_cache_dir()
  target = os.path.join(cache_dir, _corpus_fingerprint(corpus_dir))
  if not os.path.isfile(os.path.join(target, shards.SUMMARY_NAME)):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=cache_dir)
    try:
      shards.build_shards(
          os.path.join(corpus_dir, METADATA_NAME),
          tmp,
          workers=1,
          shard_size=17,  # Four train shards: enough to exercise multi-process reading.
          source="sample_corpus",
          progress=False,
      )
      try:
        os.rename(tmp, target)
      except OSError:  # Another process finished first; its shards are identical.
        if not os.path.isfile(os.path.join(target, shards.SUMMARY_NAME)):
          raise
    finally:
      if os.path.isdir(tmp):
        shutil.rmtree(tmp)
  return {split: records.list_shards(target, split) for split in ("train", "validation")}


# The narrow codec of the demos (`configs/codec.py:demo`). Untrained (seed 0), it is what the S2S
# demo encodes the corpus with when no trained codec is given: its codes are a fixed,
# deterministic tokenisation of the audio, enough for a language model to learn, not for
# listening.
DEMO_CODEC = dict(encoder_channels=(8, 16, 32, 64, 128), decoder_channels=(128, 64, 32, 16, 8, 8),
                  strides=(2, 2, 2, 2, 5), hidden_dim=128, codebook_size=256, num_quantizers=8)
CODEC_INFO_NAME = "codec.json"


def _codec_for_codes(codec_checkpoint: str | None):
  """`(make codec model, its kwargs, its description)`: a loaded checkpoint, or the untrained demo
  codec, whose initialisation (~20 s of compilation on 2 cores) waits until codes are encoded."""
  import jax  # Only encoding needs JAX and the codec.

  from telugu_jax.inference import codec as inference_codec
  from telugu_jax.models.codec import Codec

  from telugu_jax import checkpoints

  if codec_checkpoint:
    root = checkpoints.resolve(codec_checkpoint)
    codec = inference_codec.load_codec(root)
    return (lambda: codec), codec.codec_kwargs, (
        f"{os.path.abspath(root)} step {checkpoints.latest_step(root)}")

  def untrained():
    audio_in = np.zeros((1, audio.SAMPLE_RATE), np.float32)
    variables = jax.jit(Codec(**DEMO_CODEC).init)(jax.random.key(0), audio_in)
    return inference_codec.CodecModel(DEMO_CODEC, variables)

  return untrained, DEMO_CODEC, "untrained demo codec, seed 0"


def sample_code_shards(codec_checkpoint: str | None = None,
                       cache_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
  """Code shards of the bundled corpus (S2S stage 1 data), encoded on first use and cached.

  Each utterance is level-normalised and encoded whole; speaker and emotion ids are 0 (the
  corpus's espeak voices are not among the model's speakers). `codec.json` beside the shards
  names the codec, its levels and vocabulary.

  Args:
    codec_checkpoint: a codec checkpoint or training workdir; None: `DEMO_CODEC`, untrained.
    cache_dir: as for `sample_shards`.

  Returns:
    `{"train": [shard paths], "validation": [shard paths]}`.
  """
  audio_shards = sample_shards(cache_dir)
  cache_dir = os.fspath(cache_dir) if cache_dir is not None else _default_cache_dir()
  make_codec, codec_kwargs, description = _codec_for_codes(codec_checkpoint)
  key = hashlib.sha256(f"{_corpus_fingerprint(CORPUS_DIR)} {description} "
                       f"{sorted(codec_kwargs.items())}".encode()).hexdigest()[:16]
  target = os.path.join(cache_dir, f"codes-{key}")
  if not os.path.isfile(os.path.join(target, CODEC_INFO_NAME)):
    codec = make_codec()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".encoding-", dir=cache_dir)
    try:
      for split, paths in audio_shards.items():
        examples = []
        for path in paths:
          for record in records.read_records(path):
            arrays, meta = records.decode_record(record)
            wave = audio.normalize_rms(audio.pcm16_to_float(arrays["pcm"]))
            examples.append({"codes": codec.encode(wave[None])[0], "key": meta.get("key"),
                             "transcript": meta.get("transcript", ""), "split": split})
        records.write_code_shards(examples, tmp, split=split, records_per_shard=32)
      with open(os.path.join(tmp, CODEC_INFO_NAME), "w") as f:
        json.dump({"codec": description, "num_quantizers": codec.num_quantizers,
                   "codebook_size": codec.codebook_size,
                   "frame_rate": audio.SAMPLE_RATE / codec.num_samples(1)}, f, indent=2)
      try:
        os.rename(tmp, target)
      except OSError:  # Another process finished first; its shards are identical.
        if not os.path.isfile(os.path.join(target, CODEC_INFO_NAME)):
          raise
    finally:
      if os.path.isdir(tmp):
        shutil.rmtree(tmp)
  return {split: records.list_shards(target, split) for split in ("train", "validation")}
