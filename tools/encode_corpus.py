r"""Encodes audio shards into code shards for S2S training.

  python tools/encode_corpus.py --checkpoint=runs/codec --input='/data/shards/te/*.arrayrecord' \
      --output=/data/codes/te
  python tools/encode_corpus.py --checkpoint=converted/ --input='a/train-*,b/train-*' \
      --output=/data/codes/ab --process_index=1 --process_count=4   # one of 4 independent jobs
  python tools/encode_corpus.py ... --distributed                   # under jax.distributed

Input: audio ArrayRecord shards as `tools/build_shards.py` writes them (comma-separated globs).
`--checkpoint` is a converted codec checkpoint or a codec training workdir (its latest step).

Every record is encoded whole (no crops), level-normalised as in training
(`audio.normalize_rms`: RMS -16 dBFS, peaks above full scale tamed). The codes of each utterance
equal `load_codec(checkpoint).encode(wave)` of that utterance alone: utterances are batched with
per-row lengths and the padding is masked inside the model.

Outputs, in `--output`:
  * one code shard per input shard, with the same base name: a `records.code_record` per
    utterance (codes `[n_q, num_frames(length)]`, stored as int16) with the input's `key`,
    `speaker`, `emotion`, `transcript`, `split`, `source` (and `segment`/`num_segments` where
    present), `num_samples`, and `speaker_id`/`emotion_id` from `records.SPEAKER_IDS` /
    `records.EMOTION_IDS`. Names are matched after stripping and lower-casing; an unknown or
    missing speaker gets id 0 (`male_young`) and an unknown or missing emotion id 0 (`neutral`),
    each counted in the summary (a missing name is counted as `<missing>`);
  * `<shard>.json` beside each code shard: its counts, skipped records and unknown names;
  * `codec.json` (written by process 0): what S2S training needs from the codec
    (`num_quantizers`, `codebook_size`, `sample_rate`, `hop` samples per frame, nominal
    `frame_rate` = sample_rate / hop), the checkpoint path, step, configuration and a fingerprint
    of its weights. Rerunning into a folder whose `codec.json` names other weights is refused;
  * `summary.json` (one process) or `summary-{index}.json` per process: shards, records, audio
    hours, frames, skipped records (shard, index, reason), unreadable shards, unknown names with
    counts, and this run's seconds, audio-seconds per second and frames per second. The process
    that finishes last (whichever finds every `summary-{i}.json` of the same run present)
    merges them into `summary.json`; the merged speed is the total audio over the slowest
    process's seconds (the processes are assumed to run at the same time).

Resuming: shards are written atomically (a temporary name, renamed when complete), so an existing
output shard is finished and skipped on rerun; temporary files a killed run left behind
(`<shard>.tmp-*`, `<shard>.json.tmp-*`) are deleted. Only one process may own a shard at a time.
Corrupt records (`records.CorruptRecordError`), records that are not audio and utterances too
short for one frame are skipped and listed, never fatal; an input shard whose index cannot be
read is reported and skipped (rerunning retries it).

Multi-process: process `i` of `n` takes the input shards `k` (in sorted order of all matches)
with `k % n == i`: `--process_index/--process_count` for independent jobs, or `--distributed`,
which calls `jax.distributed.initialize()` and uses `jax.process_index()/process_count()`. Each
process encodes on its first local device.

Batching: utterances are collected over a window of about 30 minutes of audio, sorted by length
and padded to widths from a grid with `--buckets_per_octave` widths per doubling of the length
(with the default 4 a width is at most 1.25 times the length; 2 is `CodecModel.encode`'s own
grid, 1, 1.5, 2, 3, 4, 6 ... seconds). Each width has a fixed number of rows (about
`--batch_seconds` of audio), so it compiles once; utterances left over at one width move up to
the next, and only the very last batch is shorter (rows rounded up to a power of two). Set
`JAX_COMPILATION_CACHE_DIR` to keep compiled widths between runs. Computation is float32
throughout and asynchronous: the next batch is prepared while the current one runs. The summary's
`this_run` lists the batch shapes, the compilation seconds and the share of padding.

Speed: the faithful codec's encoder and quantizer cost 11.5 GFLOP per second of audio, so on CPU
the tool runs at the machine's float32 convolution/matmul throughput (measured: 6.8 audio-seconds
per CPU-second, about 78 GFLOP/s per core, on a 2-core Xeon). On a GPU the same command uses the
GPU; convolution algorithms chosen per shape there may round differently, so codes are expected,
not verified, to match single-utterance encoding exactly (they do on CPU).
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from telugu_jax import checkpoints  # noqa: E402
from telugu_jax.data import audio  # noqa: E402
from telugu_jax.data import records  # noqa: E402
from telugu_jax.data import shards as shards_lib  # noqa: E402
from telugu_jax.inference import codec as inference_codec  # noqa: E402

CODEC_INFO_NAME = "codec.json"
SUMMARY_NAME = "summary.json"
CODEC_INFO_FORMAT = "telugu_jax.codec_info/1"
SIDECAR_FORMAT = "telugu_jax.code_shard/1"
SUMMARY_FORMAT = "telugu_jax.code_summary/1"
KEPT_META = ("key", "speaker", "emotion", "transcript", "split", "source")
OPTIONAL_META = ("segment", "num_segments")
MISSING_NAME = "<missing>"
MIN_WIDTH = 4000  # the narrowest padded width (0.25 s)
WINDOW_SECONDS = 1800.0  # audio collected before sorting it into batches
CPU_BATCH_SECONDS = 32.0
ACCELERATOR_BATCH_SECONDS = 512.0


class UsageError(Exception):
  """A problem with the command line or the environment; reported as one line, exit code 1."""


# ----------------------------------------------------------------------------------------------
# Inputs, names, widths.


def expand_inputs(spec: str) -> list[str]:
  """Sorted, de-duplicated shard paths of comma-separated globs.

  Args:
    spec: e.g. `"/data/a/train-*,/data/b/*.arrayrecord"`.

  Returns:
    Absolute paths of the matching files.

  Raises:
    UsageError: a pattern matches no file, or two shards share a base name (their code shards
      would collide).
  """
  patterns = [p.strip() for p in spec.split(",") if p.strip()]
  if not patterns:
    raise UsageError("--input names no shards")
  paths = set()
  for pattern in patterns:
    matches = [p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p)]
    if not matches:
      raise UsageError(f"no shards match {pattern!r}")
    paths.update(os.path.abspath(p) for p in matches)
  paths = sorted(paths)
  by_name = collections.defaultdict(list)
  for path in paths:
    by_name[os.path.basename(path)].append(path)
  clashes = {name: found for name, found in by_name.items() if len(found) > 1}
  if clashes:
    name, found = next(iter(clashes.items()))
    raise UsageError(f"{len(clashes)} shard name(s) occur in several inputs, e.g. {name!r} in "
                     f"{found}: code shards are named after their input")
  return paths


def select_shards(paths: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """The shards of one process: every `process_count`-th, starting at `process_index`.

  Args:
    paths: all input shards, in the same order in every process.
    process_index: this process, in `[0, process_count)`.
    process_count: the number of processes.

  Returns:
    `paths[k]` for every `k % process_count == process_index`.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise UsageError(f"need 0 <= process_index < process_count, got {process_index} and "
                     f"{process_count}")
  return [p for k, p in enumerate(paths) if k % process_count == process_index]


def style_id(name: Any, vocabulary: dict[str, int]) -> tuple[int, str | None]:
  """Maps a speaker or emotion name to its id (after stripping and lower-casing).

  Args:
    name: the name in the record's metadata (any value; non-strings count as missing).
    vocabulary: `records.SPEAKER_IDS` or `records.EMOTION_IDS`.

  Returns:
    `(id, None)` for a known name, `(0, name)` for an unknown one and `(0, MISSING_NAME)` for a
    missing or empty one.
  """
  if not isinstance(name, str) or not name.strip():
    return 0, MISSING_NAME
  key = name.strip().lower()
  if key in vocabulary:
    return vocabulary[key], None
  return 0, name


def padded_width(length: int, per_octave: int) -> int:
  """The batch width for an utterance of `length` samples.

  Widths are `MIN_WIDTH * 2**k * (1 + j / per_octave)`: with `per_octave=2` the grid of
  `CodecModel.encode` (1, 1.5, 2, 3, 4, 6 ... seconds) extended below one second.

  Args:
    length: samples.
    per_octave: widths per doubling of the length.

  Returns:
    The smallest grid width that holds `length`.
  """
  if length <= MIN_WIDTH:
    return MIN_WIDTH
  base = MIN_WIDTH << (((length - 1) // MIN_WIDTH).bit_length() - 1)  # < length <= 2 * base
  step = max(1, base // per_octave)
  return -(-length // step) * step


# ----------------------------------------------------------------------------------------------
# Codec description.


def weights_fingerprint(variables: Any) -> str:
  """Identifies a codec's weights.

  Args:
    variables: a pytree of arrays.

  Returns:
    The first 16 hex digits of the SHA-256 of every array (path, dtype, shape, bytes), in path
    order.
  """
  h = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()[:16]


def codec_info(codec: inference_codec.CodecModel, checkpoint: str, root: str,
               step: int | None) -> dict[str, Any]:
  """The contents of `codec.json`.

  Args:
    codec: the loaded codec.
    checkpoint: the `--checkpoint` argument.
    root: the checkpoint root it resolved to.
    step: the step loaded.

  Returns:
    A JSON-able dict (see the module docstring).
  """
  strides = [int(s) for s in codec.model.strides]
  hop = math.prod(strides)
  return {
      "format": CODEC_INFO_FORMAT,
      "num_quantizers": codec.num_quantizers,
      "codebook_size": codec.codebook_size,
      "sample_rate": codec.sample_rate,
      "hop": hop,
      "frame_rate": codec.sample_rate / hop,
      "frames_for_one_second": codec.num_frames(codec.sample_rate),
      "code_dtype": "int16",
      "checkpoint": os.path.abspath(checkpoint),
      "checkpoint_root": os.path.abspath(root),
      "step": step,
      "config": {k: list(v) if isinstance(v, tuple) else v
                 for k, v in codec.codec_kwargs.items()},
      "config_hash": codec.config_hash,
      "weights_fingerprint": weights_fingerprint(codec.variables),
      "normalization": {"target_rms": audio.TARGET_RMS, "peak_limit": 1.0, "peak_target": 0.95},
  }


def load_codec(checkpoint: str) -> tuple[inference_codec.CodecModel, dict[str, Any]]:
  """Loads the latest step of a codec checkpoint.

  Args:
    checkpoint: a converted codec checkpoint or a codec training workdir.

  Returns:
    `(codec, codec_info(...))`.

  Raises:
    UsageError: no checkpoint there, not a codec checkpoint, or none of its steps restores.
  """
  try:
    root = checkpoints.resolve(checkpoint)
    step = checkpoints.latest_step(root)
    codec = inference_codec.load_codec(checkpoint)
  except (FileNotFoundError, ValueError, checkpoints.CorruptCheckpointError) as e:
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UsageError(f"cannot load codec checkpoint {checkpoint!r}: {first_line}") from e
  return codec, codec_info(codec, checkpoint, root, step)


# ----------------------------------------------------------------------------------------------
# Shards being encoded.


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1)
  os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


class _Utterance:
  """One record to encode: its shard, its position among the shard's kept records, int16 PCM."""

  __slots__ = ("job", "slot", "pcm")

  def __init__(self, job: "_ShardJob", slot: int, pcm: np.ndarray):
    self.job, self.slot, self.pcm = job, slot, pcm


class _ShardJob:
  """An input shard on its way to a code shard.

  Holds the kept records' metadata and, as they arrive, their codes; written when the last code
  is in.
  """

  def __init__(self, input_path: str, output_path: str):
    self.input_path = input_path
    self.output_path = output_path
    self.metas: list[dict[str, Any]] = []
    self.codes: list[np.ndarray | None] = []
    self.remaining = 0
    self.skipped: list[dict[str, Any]] = []
    self.unknown_speakers: collections.Counter = collections.Counter()
    self.unknown_emotions: collections.Counter = collections.Counter()
    self.samples = 0
    self.frames = 0

  def add(self, pcm: np.ndarray, meta: dict[str, Any]) -> _Utterance:
    speaker_id, unknown_speaker = style_id(meta.get("speaker"), records.SPEAKER_IDS)
    emotion_id, unknown_emotion = style_id(meta.get("emotion"), records.EMOTION_IDS)
    if unknown_speaker is not None:
      self.unknown_speakers[unknown_speaker] += 1
    if unknown_emotion is not None:
      self.unknown_emotions[unknown_emotion] += 1
    kept = {k: meta.get(k, "") for k in KEPT_META}
    kept.update({k: meta[k] for k in OPTIONAL_META if k in meta})
    kept.update(speaker_id=speaker_id, emotion_id=emotion_id, num_samples=int(pcm.size))
    self.metas.append(kept)
    self.codes.append(None)
    self.remaining += 1
    self.samples += int(pcm.size)
    return _Utterance(self, len(self.metas) - 1, pcm)

  def sidecar(self) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "input": self.input_path,
        "records": len(self.metas),
        "seconds": self.samples / audio.SAMPLE_RATE,
        "frames": self.frames,
        "skipped": self.skipped,
        "unknown_speakers": dict(self.unknown_speakers),
        "unknown_emotions": dict(self.unknown_emotions),
    }

  def write(self) -> dict[str, Any]:
    """Writes the code shard (sidecar first, so a finished shard always has one)."""
    with records.ShardWriter(self.output_path) as writer:
      for meta, codes in zip(self.metas, self.codes):
        meta = dict(meta)
        writer.write(records.code_record(codes, speaker_id=meta.pop("speaker_id"),
                                         emotion_id=meta.pop("emotion_id"), **meta))
      sidecar = self.sidecar()
      _write_json(self.output_path + ".json", sidecar)
    return sidecar


def remove_stale_files(output_path: str) -> list[str]:
  """Deletes temporary files a killed run left for a code shard.

  Args:
    output_path: the code shard's path.

  Returns:
    The paths deleted.
  """
  stale = sorted(glob.glob(glob.escape(output_path) + ".tmp-*")
                 + glob.glob(glob.escape(output_path) + ".json.tmp-*"))
  for path in stale:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
  return stale


def finished_stats(output_path: str) -> dict[str, Any]:
  """The statistics of a finished code shard.

  Args:
    output_path: the code shard's path.

  Returns:
    Its sidecar, or one rebuilt from its records if the sidecar is missing.

  Raises:
    UsageError: the sidecar is missing and the shard is unreadable.
  """
  sidecar = _read_json(output_path + ".json")
  if sidecar is not None and sidecar.get("format") == SIDECAR_FORMAT:
    return sidecar
  samples = frames = count = 0
  try:
    for data in records.read_records(output_path):
      arrays, meta = records.decode_record(data)
      samples += int(meta.get("num_samples", 0))
      frames += int(arrays["codes"].shape[1])
      count += 1
  except (records.CorruptRecordError, KeyError, RuntimeError) as e:
    raise UsageError(f"{output_path}: finished code shard without a sidecar is unreadable ({e}); "
                     "delete it to encode it again") from e
  return {"format": SIDECAR_FORMAT, "records": count, "seconds": samples / audio.SAMPLE_RATE,
          "frames": frames, "skipped": [], "unknown_speakers": {}, "unknown_emotions": {}}


def read_shard(path: str) -> list[bytes | Exception]:
  """Reads every record of an input shard.

  Args:
    path: the shard.

  Returns:
    Per record, its bytes, or the exception reading it raised.

  Raises:
    RuntimeError (or another reader error): the shard's index cannot be read at all.
  """
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(path)
  try:
    num_records = reader.num_records()
    try:
      return list(reader.read_all())
    except Exception:  # A damaged chunk: read record by record to save the others.
      out = []
      for i in range(num_records):
        try:
          out.append(reader.read([i])[0])
        except Exception as e:  # The reader's error types are not part of its API.
          out.append(e)
      return out
  finally:
    reader.close()


# ----------------------------------------------------------------------------------------------
# Batching.


class BatchEncoder:
  """Sorts utterances by length into fixed-shape batches and runs them, one batch in flight.

  Args:
    codec: the loaded codec.
    batch_samples: audio per batch (rows per width = `batch_samples // width`, at least 1).
    per_octave: widths per doubling of the length (see `padded_width`).
    window_samples: audio collected before a window is sorted into batches.
    on_codes: called with `(utterance, codes [n_q, frames])` for every utterance.
  """

  def __init__(self, codec: inference_codec.CodecModel, batch_samples: int, per_octave: int,
               window_samples: int, on_codes: Callable[[_Utterance, np.ndarray], None]):
    self.codec = codec
    self.batch_samples = batch_samples
    self.per_octave = per_octave
    self.window_samples = window_samples
    self.on_codes = on_codes
    self._pending: list[_Utterance] = []
    self._pending_samples = 0
    self._in_flight: tuple[list[_Utterance], jax.Array] | None = None
    self.shapes: dict[tuple[int, int], int] = {}  # (rows, width) -> batches run
    self.compile_seconds = 0.0
    self.computed_samples = 0  # rows x width, dummy rows included
    self.valid_samples = 0

  def rows(self, width: int) -> int:
    return max(1, self.batch_samples // width)

  def add(self, utterance: _Utterance) -> None:
    self._pending.append(utterance)
    self._pending_samples += utterance.pcm.size
    if self._pending_samples >= self.window_samples:
      self._run_window(final=False)

  def finish(self) -> None:
    """Encodes everything still pending and waits for the last batch."""
    self._run_window(final=True)
    self._collect()

  def _run_window(self, final: bool) -> None:
    pending = sorted(self._pending, key=lambda u: u.pcm.size)
    carry: list[_Utterance] = []
    for width, group in itertools.groupby(
        pending, key=lambda u: padded_width(u.pcm.size, self.per_octave)):
      items = carry + list(group)
      rows = self.rows(width)
      full = len(items) - len(items) % rows
      for start in range(0, full, rows):
        self._dispatch(items[start : start + rows], width, rows)
      carry = items[full:]  # the longest of this width: they move up to the next width
    if carry and final:
      width = padded_width(carry[-1].pcm.size, self.per_octave)
      rows = min(self.rows(width), 1 << (len(carry) - 1).bit_length())
      self._dispatch(carry, width, rows)
      carry = []
    self._pending = carry
    self._pending_samples = sum(u.pcm.size for u in carry)

  def _dispatch(self, items: list[_Utterance], width: int, rows: int) -> None:
    wave = np.zeros((rows, width), np.float32)
    lengths = np.full((rows,), width, np.int32)  # dummy rows: silence of the full width
    for row, utterance in enumerate(items):
      wave[row, : utterance.pcm.size] = audio.normalize_rms(audio.pcm16_to_float(utterance.pcm))
      lengths[row] = utterance.pcm.size
    new_shape = (rows, width) not in self.shapes
    start = time.perf_counter()
    codes = self.codec.encode_batch(wave, lengths)
    if new_shape:  # jit compiles before it dispatches: this call's time is the compilation.
      self.compile_seconds += time.perf_counter() - start
    self.shapes[(rows, width)] = self.shapes.get((rows, width), 0) + 1
    self.computed_samples += rows * width
    self.valid_samples += int(lengths[: len(items)].sum())
    self._collect()
    self._in_flight = (items, codes)

  def _collect(self) -> None:
    if self._in_flight is None:
      return
    items, codes = self._in_flight
    self._in_flight = None
    codes = np.asarray(codes)
    for row, utterance in enumerate(items):
      self.on_codes(utterance, codes[row, :, : self.codec.num_frames(utterance.pcm.size)])


# ----------------------------------------------------------------------------------------------
# Summaries.


def _input_fingerprint(paths: Sequence[str], process_count: int) -> str:
  h = hashlib.sha256(f"{process_count}\n".encode())
  for path in paths:
    h.update(f"{path}\n".encode())
  return h.hexdigest()[:16]


def _add_counts(total: dict[str, int], counts: dict[str, int]) -> None:
  for name, count in counts.items():
    total[name] = total.get(name, 0) + count


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Combines the summaries of the processes of one run.

  Args:
    summaries: `summary-{i}.json` of every process.

  Returns:
    The merged summary: counts and lists summed and joined; `this_run` speeds are the total
    audio over the slowest process's seconds.
  """
  merged = {
      "format": SUMMARY_FORMAT,
      "process_count": summaries[0]["process_count"],
      "input_shards": summaries[0]["input_shards"],
      "input_fingerprint": summaries[0]["input_fingerprint"],
      "output": summaries[0]["output"],
      "shards": {k: sum(s["shards"][k] for s in summaries) for k in summaries[0]["shards"]},
      "unreadable_shards": [x for s in summaries for x in s["unreadable_shards"]],
      "records": sum(s["records"] for s in summaries),
      "audio_hours": sum(s["audio_hours"] for s in summaries),
      "frames": sum(s["frames"] for s in summaries),
      "skipped_records": [x for s in summaries for x in s["skipped_records"]],
      "unknown_speakers": {},
      "unknown_emotions": {},
      "this_run": {},
  }
  for s in summaries:
    _add_counts(merged["unknown_speakers"], s["unknown_speakers"])
    _add_counts(merged["unknown_emotions"], s["unknown_emotions"])
  runs = [s["this_run"] for s in summaries]
  seconds = max(r["seconds"] for r in runs)
  audio_seconds = sum(r["audio_seconds"] for r in runs)
  frames = sum(r["frames"] for r in runs)
  merged["this_run"] = {
      "records": sum(r["records"] for r in runs),
      "audio_seconds": audio_seconds,
      "frames": frames,
      "seconds": seconds,
      "audio_seconds_per_second": audio_seconds / seconds if seconds > 0 else 0.0,
      "frames_per_second": frames / seconds if seconds > 0 else 0.0,
  }
  return merged


def _maybe_merge(output: str, fingerprint: str, process_count: int) -> dict[str, Any] | None:
  """Merges `summary-{i}.json` into `summary.json` if every process of this run wrote one."""
  summaries = []
  for i in range(process_count):
    summary = _read_json(os.path.join(output, f"summary-{i}.json"))
    if summary is None or summary.get("input_fingerprint") != fingerprint:
      return None
    summaries.append(summary)
  merged = merge_summaries(summaries)
  _write_json(os.path.join(output, SUMMARY_NAME), merged)
  return merged


def format_summary(summary: dict[str, Any], max_listed: int = 10) -> str:
  """Human-readable lines about a summary.

  Args:
    summary: a process's or the merged summary.
    max_listed: at most this many skipped records, unreadable shards and names are listed.

  Returns:
    The text, without a trailing newline.
  """
  run = summary["this_run"]
  shards = summary["shards"]
  lines = [
      f"{summary['records']} records, {summary['audio_hours']:.3f} audio hours, "
      f"{summary['frames']} frames in {summary['output']}",
      f"shards: {shards['encoded']} encoded, {shards['already_done']} already done, "
      f"{shards['unreadable']} unreadable (of {shards['assigned']})",
      f"this run: {run['audio_seconds']:.1f} audio seconds in {run['seconds']:.1f} s = "
      f"{run['audio_seconds_per_second']:.2f} audio-seconds/s, "
      f"{run['frames_per_second']:.0f} frames/s",
  ]
  if "padding_fraction" in run:
    lines.append(f"batches: {run['batches']} of {len(run['batch_shapes'])} shapes, "
                 f"{run['compile_seconds']:.1f} s compiling, "
                 f"{run['padding_fraction']:.1%} of computed samples padding")
  for what in ("unreadable_shards", "skipped_records"):
    entries = summary[what]
    if entries:
      lines.append(f"{what.replace('_', ' ')}: {len(entries)}")
      for entry in entries[:max_listed]:
        where = entry["shard"] + (f" record {entry['index']}" if "index" in entry else "")
        lines.append(f"  {where}: {entry['reason']}")
      if len(entries) > max_listed:
        lines.append(f"  ... {len(entries) - max_listed} more in summary.json")
  for what, default in (("unknown_speakers", "male_young"), ("unknown_emotions", "neutral")):
    if summary[what]:
      names = ", ".join(f"{n} ({c})" for n, c in sorted(summary[what].items())[:max_listed])
      lines.append(f"{what.replace('_', ' ')} (id 0 = {default}): {names}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The run.


def _decode_audio(data: bytes | Exception) -> tuple[np.ndarray, dict[str, Any]] | str:
  """`(pcm, meta)` of an audio record, or the reason it is skipped."""
  if isinstance(data, Exception):
    return f"unreadable ({type(data).__name__}: {data})"
  try:
    arrays, meta = records.decode_record(data)
  except records.CorruptRecordError as e:
    return f"corrupt: {e}"
  pcm = arrays.get("pcm")
  if pcm is None or pcm.ndim != 1 or pcm.dtype != np.int16:
    return f"not an audio record (kind {meta.get('kind')!r}, no int16 'pcm' [T] array)"
  return pcm, meta


def _default_batch_seconds() -> float:
  return CPU_BATCH_SECONDS if jax.default_backend() == "cpu" else ACCELERATOR_BATCH_SECONDS


def encode_corpus(
    checkpoint: str,
    inputs: str,
    output: str,
    *,
    batch_seconds: float | None = None,
    buckets_per_octave: int = 4,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    window_seconds: float = WINDOW_SECONDS,
) -> dict[str, Any]:
  """Encodes this process's share of the input shards (see the module docstring).

  Args:
    checkpoint: a converted codec checkpoint or a codec training workdir.
    inputs: comma-separated globs of audio shards.
    output: the folder for code shards, `codec.json` and the summary.
    batch_seconds: audio per batch; None: 32 s on CPU, 512 s on an accelerator.
    buckets_per_octave: padded widths per doubling of the utterance length.
    process_index: this process's index.
    process_count: the number of processes sharing the shards.
    progress: show a progress bar.
    window_seconds: audio collected before sorting it into batches.

  Returns:
    This process's summary (also written to `summary.json` or `summary-{index}.json`).

  Raises:
    UsageError: no shards match a pattern, the checkpoint cannot be loaded, the output folder
      holds codes of another codec, or bad arguments.
  """
  start_time = time.perf_counter()
  if buckets_per_octave < 1:
    raise UsageError(f"--buckets_per_octave must be at least 1, got {buckets_per_octave}")
  all_shards = expand_inputs(inputs)
  mine = select_shards(all_shards, process_index, process_count)
  output = os.path.abspath(output)
  outputs = {path: os.path.join(output, os.path.basename(path)) for path in mine}
  clobbered = sorted(p for p in all_shards if os.path.join(output, os.path.basename(p)) == p)
  if clobbered:
    raise UsageError(f"--output is the folder of input shards (e.g. {clobbered[0]})")
  if batch_seconds is None:
    batch_seconds = _default_batch_seconds()
  if batch_seconds <= 0:
    raise UsageError(f"--batch_seconds must be positive, got {batch_seconds}")

  codec, info = load_codec(checkpoint)
  os.makedirs(output, exist_ok=True)
  info_path = os.path.join(output, CODEC_INFO_NAME)
  existing = _read_json(info_path)
  if existing is not None and existing.get("weights_fingerprint") != info["weights_fingerprint"]:
    raise UsageError(f"{output} holds codes of another codec ({existing.get('checkpoint')}, "
                     f"weights {existing.get('weights_fingerprint')}); use a new --output")
  if process_index == 0:
    _write_json(info_path, info)

  todo, done = [], {}
  for path in mine:
    remove_stale_files(outputs[path])
    if os.path.isfile(outputs[path]):
      done[path] = finished_stats(outputs[path])
    else:
      todo.append(path)

  stats = {path: sidecar for path, sidecar in done.items()}
  unreadable: list[dict[str, str]] = []
  run = {"records": 0, "samples": 0, "frames": 0}
  estimates = {}
  for path in todo:
    sidecar = shards_lib.read_sidecar(path)
    estimates[path] = (sidecar["seconds"] if sidecar and "seconds" in sidecar
                       else os.path.getsize(path) / (2 * audio.SAMPLE_RATE)) / 3600.0
  bar = tqdm.tqdm(total=sum(estimates.values()), disable=not progress, desc="encoding",
                  unit="audio-h", dynamic_ncols=True,
                  bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.4f}/{total:.4f} audio-h "
                             "[{elapsed}<{remaining}{postfix}]")

  def finish_job(job: _ShardJob) -> None:
    stats[job.input_path] = job.write()
    run["records"] += len(job.metas)

  def on_codes(utterance: _Utterance, codes: np.ndarray) -> None:
    job = utterance.job
    job.codes[utterance.slot] = codes
    job.frames += codes.shape[1]
    job.remaining -= 1
    run["samples"] += utterance.pcm.size
    run["frames"] += codes.shape[1]
    bar.update(utterance.pcm.size / audio.SAMPLE_RATE / 3600.0)
    elapsed = max(time.perf_counter() - start_time, 1e-9)
    audio_rate = run["samples"] / audio.SAMPLE_RATE / elapsed
    bar.set_postfix_str(f"{audio_rate / 3600:.4f} audio-h/s = {audio_rate:.1f} audio-s/s, "
                        f"{run['frames'] / elapsed:.0f} frames/s", refresh=False)
    if job.remaining == 0:
      finish_job(job)

  window_seconds = max(window_seconds, 4 * batch_seconds)
  encoder = BatchEncoder(codec, max(1, int(batch_seconds * audio.SAMPLE_RATE)),
                         buckets_per_octave, int(window_seconds * audio.SAMPLE_RATE), on_codes)
  min_length = next(n for n in itertools.count(1) if codec.num_frames(n) >= 1)
  for path in todo:
    try:
      data = read_shard(path)
    except Exception as e:  # The reader's error types are not part of its API.
      unreadable.append({"shard": path, "reason": f"unreadable index ({type(e).__name__}: {e})"})
      bar.total -= estimates[path]
      bar.refresh()
      continue
    job = _ShardJob(path, outputs[path])
    utterances = []
    for index, item in enumerate(data):
      decoded = _decode_audio(item)
      if isinstance(decoded, tuple) and decoded[0].size < min_length:
        decoded = f"too short to encode ({decoded[0].size} samples, need {min_length})"
      if isinstance(decoded, str):
        job.skipped.append({"shard": path, "index": index, "reason": decoded})
        continue
      utterances.append(job.add(*decoded))
    bar.total += job.samples / audio.SAMPLE_RATE / 3600.0 - estimates[path]
    bar.refresh()
    if not utterances:
      finish_job(job)
    for utterance in utterances:
      encoder.add(utterance)
  encoder.finish()
  bar.close()
  seconds = time.perf_counter() - start_time

  fingerprint = _input_fingerprint(all_shards, process_count)
  summary = {
      "format": SUMMARY_FORMAT,
      "process_index": process_index,
      "process_count": process_count,
      "input_shards": len(all_shards),
      "input_fingerprint": fingerprint,
      "output": output,
      "shards": {"assigned": len(mine), "encoded": len(todo) - len(unreadable),
                 "already_done": len(done), "unreadable": len(unreadable)},
      "unreadable_shards": unreadable,
      "records": sum(s["records"] for s in stats.values()),
      "audio_hours": sum(s["seconds"] for s in stats.values()) / 3600.0,
      "frames": sum(s["frames"] for s in stats.values()),
      "skipped_records": [x for path in mine if path in stats for x in stats[path]["skipped"]],
      "unknown_speakers": {},
      "unknown_emotions": {},
      "this_run": {
          "records": run["records"],
          "audio_seconds": run["samples"] / audio.SAMPLE_RATE,
          "frames": run["frames"],
          "seconds": seconds,
          "audio_seconds_per_second": run["samples"] / audio.SAMPLE_RATE / seconds,
          "frames_per_second": run["frames"] / seconds,
          "batch_seconds": batch_seconds,
          "buckets_per_octave": buckets_per_octave,
          "batches": sum(encoder.shapes.values()),
          "batch_shapes": {f"{r}x{w}": n for (r, w), n in sorted(encoder.shapes.items())},
          "compile_seconds": encoder.compile_seconds,
          "padding_fraction": (1.0 - encoder.valid_samples / encoder.computed_samples
                               if encoder.computed_samples else 0.0),
          "backend": jax.default_backend(),
      },
  }
  for s in stats.values():
    _add_counts(summary["unknown_speakers"], s["unknown_speakers"])
    _add_counts(summary["unknown_emotions"], s["unknown_emotions"])
  if process_count == 1:
    _write_json(os.path.join(output, SUMMARY_NAME), summary)
  else:
    _write_json(os.path.join(output, f"summary-{process_index}.json"), summary)
    _maybe_merge(output, fingerprint, process_count)
  return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Parses the command line (`sys.argv[1:]` when `argv` is None)."""
  parser = argparse.ArgumentParser(
      description="Encodes audio shards into code shards for S2S training.")
  parser.add_argument("--checkpoint", required=True,
                      help="Converted codec checkpoint or codec training workdir.")
  parser.add_argument("--input", required=True, help="Audio shards: comma-separated globs.")
  parser.add_argument("--output", required=True, help="Folder for the code shards.")
  parser.add_argument("--batch_seconds", type=float, default=None,
                      help=f"Audio per batch (default {CPU_BATCH_SECONDS:g} on CPU, "
                           f"{ACCELERATOR_BATCH_SECONDS:g} on GPU/TPU).")
  parser.add_argument("--buckets_per_octave", type=int, default=4,
                      help="Padded widths per doubling of the length (more: less padding, "
                           "more compilations).")
  parser.add_argument("--process_index", type=int, default=None, help="This process's index.")
  parser.add_argument("--process_count", type=int, default=None, help="Number of processes.")
  parser.add_argument("--distributed", action="store_true",
                      help="Call jax.distributed.initialize() and use its process index/count.")
  parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line.

  Args:
    argv: the arguments without the program name (default `sys.argv[1:]`).

  Returns:
    The exit code: 0, or 1 after a usage error (printed as one line to stderr).
  """
  args = parse_args(argv)
  try:
    if args.distributed:
      if args.process_index is not None or args.process_count is not None:
        raise UsageError("--distributed takes the process index and count from JAX; "
                         "drop --process_index/--process_count")
      try:
        jax.distributed.initialize()
      except (RuntimeError, ValueError) as e:
        raise UsageError(f"jax.distributed.initialize() failed: {str(e).splitlines()[0]}") from e
      process_index, process_count = jax.process_index(), jax.process_count()
    else:
      process_index = 0 if args.process_index is None else args.process_index
      process_count = 1 if args.process_count is None else args.process_count
    summary = encode_corpus(
        args.checkpoint, args.input, args.output, batch_seconds=args.batch_seconds,
        buckets_per_octave=args.buckets_per_octave, process_index=process_index,
        process_count=process_count, progress=not args.no_progress)
  except UsageError as e:
    print(f"encode_corpus: error: {e}", file=sys.stderr)
    return 1
  print(format_summary(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
