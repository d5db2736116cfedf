"""Builds ArrayRecord shards of 16 kHz int16 audio from a folder or a manifest.

This is the library behind `tools/build_shards.py` and `sample_corpus.sample_shards()`.

Inputs
  * a folder: every audio file below it (`audio.AUDIO_EXTENSIONS`, searched recursively). The
    speaker is the name of the file's parent folder relative to the input root (empty for files
    at the root); a `<stem>.txt` next to a file is its transcript.
  * a manifest (`.csv`, `.tsv` or `.jsonl`) with a `path` column (relative to the manifest's
    folder or absolute) and optional `speaker`, `emotion`, `text` (or `transcript`), `split`
    and `source` columns.

Splits are given by the manifest's `split` column or else decided by hashing the path relative
to the input (`split_for_key`), so they never change between runs or machines. Files longer
than `max_seconds` are cut into equal segments no longer than that (their transcripts are then
dropped, since they no longer align).

Outputs, in the output folder
  * `{split}-{i:05d}-of-{n:05d}.arrayrecord`: audio records (`records.py`);
  * a JSON sidecar per shard (`<shard>.json`) with its input fingerprint, the per-record
    metadata (level statistics of the segment's source samples and its `problems`, see below),
    and every skipped file, skipped segment and warning with the reason;
  * `summary.json`: totals per split (hours, files, records), the skipped files, skipped
    segments and warnings, and the quality rules applied.

A shard whose sidecar exists and whose fingerprint matches the current inputs (and settings) is
not rebuilt, so an interrupted build resumes where it stopped; temporary files an interrupted
build left in the output folder (`*.arrayrecord.tmp-<pid>`, `*.json.tmp-<pid>`) are deleted, so
only one build may write to a folder at a time. Corrupt, empty or unreadable files are skipped
and listed, never fatal.

Quality checks (`QualityRules`; each is listed in `summary.json` with the file and the reason)
  * truncated: a WAV whose `data` chunk declares more frames than the file holds (libsndfile
    reads the part that is there without a word). Such files are skipped. FLAC and Ogg files cut
    short fail to decode and are skipped as corrupt; MP3 headers hold no reliable length, so a cut
    MP3 is not detected.
  * clipped: a segment with more than `max_clipped_fraction` (1%) of its samples at full scale.
  * silent: a segment whose peak is below `min_peak_dbfs` (-60 dBFS) or whose RMS is below
    `min_rms_dbfs` (-70 dBFS), digital silence included.
  Clipped and silent segments are dropped (`skipped_segments`; a file none of whose segments is
  kept is a skipped file). With `keep_bad_audio` all of them are kept instead, their problems
  listed in the record metadata (`problems`) and in the summary's `warnings`.

All JSON written here is standard JSON: a level that does not exist (the RMS in dBFS of digital
silence) is `null`, never `-Infinity` or `NaN`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tqdm

from telugu_jax.data import audio
from telugu_jax.data import records

SIDECAR_FORMAT = "telugu_jax.audio_shard/2"
_READABLE_SIDECAR_FORMATS = ("telugu_jax.audio_shard/1", SIDECAR_FORMAT)
_TEMPORARY_FILE = re.compile(r".+\.(arrayrecord|json)\.tmp-\d+")
SUMMARY_NAME = "summary.json"
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SourceItem:
  """One input file and what is known about it before decoding."""

  path: str  # absolute path
  key: str  # path relative to the input (POSIX separators): names the file in records/splits
  speaker: str = ""
  emotion: str = ""
  transcript: str = ""
  source: str = ""
  split: str = "train"


def _dbfs(level: float) -> float:
  return 20.0 * math.log10(level) if level > 0 else -math.inf


@dataclasses.dataclass(frozen=True)
class QualityRules:
  """Which audio the shard builder rejects, or with `keep_bad_audio` keeps and flags.

  Attributes:
    max_clipped_fraction: a segment with a larger share of samples at full scale (|x| >=
      `audio.CLIP_THRESHOLD` in any channel of the source) is `clipped`.
    min_peak_dbfs: a segment whose peak lies below this is `silent`.
    min_rms_dbfs: a segment whose RMS (of the mono fold) lies below this is `silent`.
    keep_bad_audio: keep truncated files (their readable part) and clipped and silent segments,
      flagged in the record metadata and listed in the summary's warnings, instead of skipping
      them.
  """

  max_clipped_fraction: float = 0.01
  min_peak_dbfs: float = -60.0
  min_rms_dbfs: float = -70.0
  keep_bad_audio: bool = False

  def segment_problems(self, stats: dict[str, float]) -> list[tuple[str, str]]:
    """`(problem, description)` pairs for a segment with these `audio.level_stats`."""
    problems = []
    if stats["clipped_fraction"] > self.max_clipped_fraction:
      problems.append(("clipped", f"clipped: {stats['clipped_fraction']:.2%} of samples at full "
                                  f"scale (limit {self.max_clipped_fraction:.2%})"))
    peak_dbfs = _dbfs(stats["peak"])
    if peak_dbfs < self.min_peak_dbfs or stats["rms_dbfs"] < self.min_rms_dbfs:
      problems.append(("silent", f"silent: peak {peak_dbfs:.1f} dBFS, RMS "
                                 f"{stats['rms_dbfs']:.1f} dBFS (limits {self.min_peak_dbfs:g} "
                                 f"and {self.min_rms_dbfs:g} dBFS)"))
    return problems


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """The files of one output shard."""

  path: str
  items: tuple[SourceItem, ...]
  max_seconds: float
  quality: QualityRules = QualityRules()

  def fingerprint(self) -> str:
    """Hash of the inputs (paths, metadata, sizes, modification times) and settings."""
    settings = json.dumps(dataclasses.asdict(self.quality), sort_keys=True)
    h = hashlib.sha256(f"{SIDECAR_FORMAT}|{self.max_seconds}|{settings}".encode())
    for item in self.items:
      try:
        stat = os.stat(item.path)
        file_id = f"{stat.st_size}:{stat.st_mtime_ns}"
      except OSError:
        file_id = "missing"
      h.update(json.dumps([dataclasses.asdict(item), file_id], ensure_ascii=False).encode())
    return h.hexdigest()


def split_for_key(key: str, validation_fraction: float) -> str:
  """Deterministic train/validation assignment from a file's relative path.

  Args:
    key: the path relative to the input root, with `/` separators.
    validation_fraction: the expected share of files in `validation`.

  Returns:
    `"validation"` when the first 8 bytes of sha256(key), read as a fraction of 2**64, fall below
    `validation_fraction`; otherwise `"train"`.
  """
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  fraction = int.from_bytes(digest[:8], "big") / 2.0**64
  return "validation" if fraction < validation_fraction else "train"


def _normalize_split(value: str, where: str) -> str:
  split = _SPLIT_ALIASES.get(value.strip().lower(), value.strip().lower())
  if split not in SPLITS:
    raise ValueError(
        f"{where}: unknown split {value!r} (expected one of {SPLITS} or {sorted(_SPLIT_ALIASES)})"
    )
  return split


def scan_folder(
    root: str | os.PathLike, *, source: str | None = None, validation_fraction: float = 0.1
) -> list[SourceItem]:
  """Lists the audio files below `root` as `SourceItem`s (sorted by relative path).

  Args:
    root: the folder to search recursively.
    source: the source name stored in each record (default: the folder's name).
    validation_fraction: share of files hashed into `validation`.

  Returns:
    One item per audio file.
  """
  root = os.path.abspath(os.fspath(root))
  source = source or os.path.basename(root.rstrip(os.sep))
  items = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for filename in sorted(filenames):
      if not filename.lower().endswith(audio.AUDIO_EXTENSIONS):
        continue
      path = os.path.join(dirpath, filename)
      key = os.path.relpath(path, root).replace(os.sep, "/")
      parent = os.path.dirname(key)
      transcript_path = os.path.splitext(path)[0] + ".txt"
      transcript = ""
      if os.path.isfile(transcript_path):
        with open(transcript_path, encoding="utf-8") as f:
          transcript = f.read().strip()
      items.append(
          SourceItem(
              path=path,
              key=key,
              speaker=os.path.basename(parent),
              transcript=transcript,
              source=source,
              split=split_for_key(key, validation_fraction),
          )
      )
  return sorted(items, key=lambda item: item.key)


def read_manifest(
    manifest: str | os.PathLike, *, source: str | None = None, validation_fraction: float = 0.1
) -> list[SourceItem]:
  """Reads a CSV, TSV or JSONL manifest into `SourceItem`s.

  Args:
    manifest: the manifest file. Columns (CSV/TSV header or JSON keys): `path` (required),
      `speaker`, `emotion`, `text` or `transcript`, `split`, `source`.
    source: default source name (default: the manifest's file name without extension).
    validation_fraction: share of rows without a `split` hashed into `validation`.

  Returns:
    One item per row, in manifest order.

  Raises:
    ValueError: the manifest lacks a `path` column, or has an unknown split name; the message
      names the manifest and the line.
  """
  manifest = os.path.abspath(os.fspath(manifest))
  base = os.path.dirname(manifest)
  source = source or os.path.splitext(os.path.basename(manifest))[0]
  ext = os.path.splitext(manifest)[1].lower()
  with open(manifest, encoding="utf-8-sig", newline="") as f:
    if ext == ".jsonl":
      rows = []
      for line_no, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append((line_no, json.loads(line)))
          except json.JSONDecodeError as e:
            raise ValueError(f"{manifest}:{line_no}: invalid JSON ({e})") from e
    elif ext in (".csv", ".tsv"):
      reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
      if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise ValueError(f"{manifest}: header has no 'path' column (found {reader.fieldnames})")
      rows = [(line_no, row) for line_no, row in enumerate(reader, 2)]
    else:
      raise ValueError(f"{manifest}: unsupported manifest type {ext!r} (use .csv, .tsv or .jsonl)")
  items = []
  for line_no, row in rows:
    where = f"{manifest}:{line_no}"
    if not isinstance(row, dict) or not row.get("path"):
      raise ValueError(f"{where}: row has no 'path'")
    rel = str(row["path"])
    path = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, rel))
    key = rel.replace(os.sep, "/")
    split = row.get("split") or ""
    split = _normalize_split(split, where) if split else split_for_key(key, validation_fraction)
    items.append(
        SourceItem(
            path=path,
            key=key,
            speaker=str(row.get("speaker") or ""),
            emotion=str(row.get("emotion") or ""),
            transcript=str(row.get("text") or row.get("transcript") or ""),
            source=str(row.get("source") or source),
            split=split,
        )
    )
  return items


def plan_shards(
    items: Sequence[SourceItem],
    output_dir: str | os.PathLike,
    *,
    shard_size: int,
    max_seconds: float,
    quality: QualityRules = QualityRules(),
) -> list[ShardTask]:
  """Groups items by split into shards of `shard_size` files (sorted by key within a split)."""
  if shard_size <= 0:
    raise ValueError(f"shard_size must be positive, got {shard_size}")
  tasks = []
  for split in SPLITS:
    split_items = sorted((i for i in items if i.split == split), key=lambda i: i.key)
    n = -(-len(split_items) // shard_size)
    for s in range(n):
      name = f"{split}-{s:05d}-of-{n:05d}{records.SHARD_SUFFIX}"
      chunk = tuple(split_items[s * shard_size : (s + 1) * shard_size])
      tasks.append(
          ShardTask(os.path.join(os.fspath(output_dir), name), chunk, max_seconds, quality)
      )
  return tasks


def _segments(length: int, max_samples: int) -> list[tuple[int, int]]:
  """Equal cuts of `length` samples, none longer than `max_samples`."""
  n = max(1, -(-length // max_samples))
  bounds = [round(i * length / n) for i in range(n + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def _wav_declared_frames(path: str) -> int | None:
  """Frames the `data` chunk of a RIFF/WAVE file declares; None if not WAVE or length unknown."""
  with open(path, "rb") as f:
    riff = f.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
      return None
    block_align = 0
    while len(chunk := f.read(8)) == 8:
      chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
      if chunk_id == b"data":  # Streaming writers leave the size 0 or 0xFFFFFFFF: unknown.
        return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
      body = f.read(min(size, 16)) if chunk_id == b"fmt " else b""
      if len(body) >= 14:
        block_align = int.from_bytes(body[12:14], "little")
      f.seek(size + size % 2 - len(body), os.SEEK_CUR)
  return None


def _truncation(item: SourceItem, frames: int, rate: int) -> str | None:
  """Why `item` counts as truncated (its header declares more than the `frames` read), or None."""
  declared = _wav_declared_frames(item.path) if item.path.lower().endswith(".wav") else None
  if declared is None or declared <= frames:
    return None
  return (f"{item.key}: truncated: the header declares {declared} frames "
          f"({declared / rate:.2f} s), the file holds {frames} ({frames / rate:.2f} s)")


def _json_levels(stats: dict[str, float]) -> dict[str, float | None]:
  """`audio.level_stats` as standard JSON: a level that does not exist (-inf dBFS) is None."""
  return {name: float(value) if math.isfinite(value) else None for name, value in stats.items()}


def _check_segments(
    item: SourceItem, samples: np.ndarray, rate: int, cuts: Sequence[tuple[int, int]],
    rules: QualityRules,
) -> list[dict[str, Any]]:
  """Level statistics and problems of each 16 kHz segment, measured on the source samples.

  Returns:
    Per segment: `stats` (`audio.level_stats`), `problems` (names), `description` (of the
    problems) and `reason` (the file, the segment and the description), the last two "" when
    there are no problems.
  """
  total = cuts[-1][1]
  segments = []
  for index, (start, end) in enumerate(cuts):
    first = min(round(start * len(samples) / total), len(samples) - 1)
    last = max(round(end * len(samples) / total), first + 1)
    stats = audio.level_stats(samples[first:last])
    problems = rules.segment_problems(stats)
    where = item.key if len(cuts) == 1 else (
        f"{item.key} (segment {index + 1} of {len(cuts)}, "
        f"{start / audio.SAMPLE_RATE:.1f}-{end / audio.SAMPLE_RATE:.1f} s)")
    description = "; ".join(text for _, text in problems)
    segments.append({
        "stats": stats,
        "problems": [name for name, _ in problems],
        "description": description,
        "reason": f"{where}: {description}" if problems else "",
    })
  return segments


def build_shard(task: ShardTask) -> dict[str, Any]:
  """Decodes the files of one shard, checks their quality and writes the shard and its sidecar.

  Runs in worker processes.

  Args:
    task: the shard to build.

  Returns:
    The sidecar dict (also written to `<shard>.json`): the input fingerprint, the metadata of
    every record, and the skipped files, skipped segments and warnings, each with its reason.
  """
  rules = task.quality
  kept, skipped, skipped_segments, warnings = [], [], [], []
  seconds = 0.0
  with records.ShardWriter(task.path) as writer:
    for item in task.items:
      try:
        samples, rate = audio.read_audio(item.path, name=item.key)
        truncated = _truncation(item, samples.shape[0], rate)
        wave = audio.resample(audio.to_mono(samples), rate, audio.SAMPLE_RATE)
        pcm = audio.float_to_pcm16(wave)
        if pcm.size == 0:
          raise audio.AudioDecodeError(f"{item.key}: shorter than one sample at 16 kHz")
      except audio.AudioDecodeError as e:
        skipped.append({"path": item.key, "reason": str(e)})
        continue
      except (OSError, RuntimeError, ValueError, MemoryError) as e:  # I/O or library failures
        skipped.append({"path": item.key, "reason": f"{item.key}: {type(e).__name__}: {e}"})
        continue
      file_problems = []
      if truncated:
        if not rules.keep_bad_audio:
          skipped.append({"path": item.key, "reason": truncated, "problems": ["truncated"]})
          continue
        warnings.append({"path": item.key, "reason": f"{truncated}; kept what it holds",
                         "problems": ["truncated"]})  # fmt: skip
        file_problems = ["truncated"]
      cuts = _segments(pcm.size, max(1, int(task.max_seconds * audio.SAMPLE_RATE)))
      segments = _check_segments(item, samples, rate, cuts, rules)
      bad = [{"path": item.key, "segment": index, "reason": segment["reason"],
              "problems": segment["problems"]}
             for index, segment in enumerate(segments) if segment["problems"]]  # fmt: skip
      if rules.keep_bad_audio:
        warnings.extend(bad)
      elif len(bad) == len(segments):
        counts = collections.Counter(p for entry in bad for p in entry["problems"])
        first = next(segment for segment in segments if segment["problems"])
        reason = first["reason"] if len(bad) == 1 else (
            f"{item.key}: all {len(bad)} segments rejected "
            f"({', '.join(f'{n} {problem}' for problem, n in sorted(counts.items()))}); the "
            f"first: {first['description']}")
        skipped.append({"path": item.key, "reason": reason, "problems": sorted(counts)})
        continue
      else:
        skipped_segments.extend(bad)
      for index, ((start, end), segment) in enumerate(zip(cuts, segments)):
        if segment["problems"] and not rules.keep_bad_audio:
          continue
        meta = {
            "kind": "audio",
            "key": item.key,
            "source": item.source,
            "speaker": item.speaker,
            "emotion": item.emotion,
            "transcript": item.transcript if len(cuts) == 1 else "",
            "split": item.split,
            "sample_rate": audio.SAMPLE_RATE,
            "duration": (end - start) / audio.SAMPLE_RATE,
            "segment": index,
            "num_segments": len(cuts),
            "orig_sample_rate": rate,
            "orig_channels": int(samples.shape[1]),
            "problems": file_problems + segment["problems"],
            **_json_levels(segment["stats"]),
        }
        writer.write(records.encode_record({"pcm": pcm[start:end]}, meta))
        kept.append(meta)
        seconds += meta["duration"]
  sidecar = {
      "format": SIDECAR_FORMAT,
      "fingerprint": task.fingerprint(),
      "files": len(task.items),
      "records": kept,
      "num_records": len(kept),
      "seconds": seconds,
      "skipped": skipped,
      "skipped_segments": skipped_segments,
      "warnings": warnings,
  }
  _write_json(task.path + ".json", sidecar)
  return sidecar


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1, allow_nan=False)
  os.replace(tmp, path)


def read_sidecar(shard_path: str) -> dict[str, Any] | None:
  """The sidecar of a finished shard, or None if there is none (or it is unreadable)."""
  try:
    with open(shard_path + ".json", encoding="utf-8") as f:
      sidecar = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return sidecar if sidecar.get("format") in _READABLE_SIDECAR_FORMATS else None


def _is_finished(task: ShardTask) -> dict[str, Any] | None:
  sidecar = read_sidecar(task.path)
  if sidecar is None or not os.path.isfile(task.path):
    return None
  return sidecar if sidecar.get("fingerprint") == task.fingerprint() else None


def _remove_temporary_files(output_dir: str) -> list[str]:
  """Deletes the temporary shards and JSON files that interrupted builds left behind."""
  removed = sorted(
      name for name in os.listdir(output_dir)
      if _TEMPORARY_FILE.fullmatch(name) and os.path.isfile(os.path.join(output_dir, name))
  )
  for name in removed:
    os.remove(os.path.join(output_dir, name))
  return removed


def _remove_stale_shards(output_dir: str, tasks: Sequence[ShardTask]) -> list[str]:
  """Deletes shards of an earlier build with different inputs (recognised by their sidecar)."""
  wanted = {os.path.basename(t.path) for t in tasks}
  removed = []
  for name in os.listdir(output_dir):
    if name.endswith(records.SHARD_SUFFIX) and name not in wanted:
      path = os.path.join(output_dir, name)
      if read_sidecar(path) is not None:
        os.remove(path)
        os.remove(path + ".json")
        removed.append(name)
  return removed


def build_shards(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    workers: int = 1,
    shard_size: int = 256,
    validation_fraction: float = 0.1,
    max_seconds: float = 30.0,
    source: str | None = None,
    quality: QualityRules = QualityRules(),
    progress: bool = True,
) -> dict[str, Any]:
  """Builds (or resumes building) audio shards; see the module docstring.

  Args:
    input_path: a folder of audio or a `.csv`/`.tsv`/`.jsonl` manifest.
    output_dir: where shards, sidecars and `summary.json` go.
    workers: decoding processes (1 = in this process).
    shard_size: input files per shard.
    validation_fraction: share of files hashed into `validation` (when no split is given).
    max_seconds: longer files are cut into segments of at most this length.
    source: source name stored in records (default: the input's name).
    quality: what counts as truncated, clipped or silent, and whether such audio is kept.
    progress: show a tqdm progress bar.

  Returns:
    The summary (also written to `summary.json`): per-split hours/files/records/shards, the
    skipped files, skipped segments and warnings with reasons, the quality rules, the
    temporary files of earlier builds removed, and the shard counts built now and reused.
  """
  input_path = os.fspath(input_path)
  output_dir = os.fspath(output_dir)
  if os.path.isdir(input_path):
    items = scan_folder(input_path, source=source, validation_fraction=validation_fraction)
  elif os.path.isfile(input_path):
    items = read_manifest(input_path, source=source, validation_fraction=validation_fraction)
  else:
    raise FileNotFoundError(f"{input_path}: no such folder or manifest")
  os.makedirs(output_dir, exist_ok=True)
  tasks = plan_shards(
      items, output_dir, shard_size=shard_size, max_seconds=max_seconds, quality=quality
  )
  temporary = _remove_temporary_files(output_dir)
  if temporary:
    logging.warning("Removed %d temporary files of an interrupted build: %s",
                    len(temporary), temporary)  # fmt: skip
  removed = _remove_stale_shards(output_dir, tasks)
  if removed:
    logging.warning("Removed %d shards of an earlier build with other inputs: %s",
                    len(removed), removed)  # fmt: skip

  sidecars: dict[str, dict[str, Any]] = {}
  todo = []
  for task in tasks:
    finished = _is_finished(task)
    if finished is None:
      todo.append(task)
    else:
      sidecars[task.path] = finished
  reused = len(sidecars)
  bar = tqdm.tqdm(
      total=sum(len(t.items) for t in tasks),
      initial=sum(len(t.items) for t in tasks if t.path in sidecars),
      unit="file",
      desc=f"shards -> {output_dir}",
      disable=not progress,
  )
  with bar:
    for task, sidecar in _run(build_shard, todo, workers):
      sidecars[task.path] = sidecar
      bar.update(len(task.items))
  summary = _summarize(tasks, sidecars, reused=reused)
  summary["quality"] = dataclasses.asdict(quality)
  summary["removed_temporary_files"] = temporary
  _write_json(os.path.join(output_dir, SUMMARY_NAME), summary)
  return summary


def _run(
    fn: Callable[[ShardTask], dict[str, Any]], tasks: Sequence[ShardTask], workers: int
):
  """Yields `(task, fn(task))` as tasks finish, in-process or in a spawn-started pool."""
  if workers <= 1 or len(tasks) <= 1:
    for task in tasks:
      yield task, fn(task)
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
    futures = {pool.submit(fn, task): task for task in tasks}
    for future in concurrent.futures.as_completed(futures):
      yield futures[future], future.result()


def _summarize(
    tasks: Sequence[ShardTask], sidecars: dict[str, dict[str, Any]], *, reused: int
) -> dict[str, Any]:
  splits: dict[str, dict[str, Any]] = {}
  lists: dict[str, list[dict[str, Any]]] = {"skipped": [], "skipped_segments": [], "warnings": []}
  for task in tasks:
    sidecar = sidecars[task.path]
    split = os.path.basename(task.path).split("-", 1)[0]
    entry = splits.setdefault(split, {"shards": [], "files": 0, "records": 0, "hours": 0.0,
                                      **{name: 0 for name in lists}})  # fmt: skip
    entry["shards"].append(os.path.basename(task.path))
    entry["files"] += sidecar["files"] - len(sidecar["skipped"])
    entry["records"] += sidecar["num_records"]
    entry["hours"] += sidecar["seconds"] / 3600.0
    for name, entries in lists.items():
      entry[name] += len(sidecar[name])
      entries.extend(sidecar[name])
  return {
      "splits": splits,
      "hours": sum(s["hours"] for s in splits.values()),
      "files": sum(s["files"] for s in splits.values()),
      **lists,
      "shards_built": len(tasks) - reused,
      "shards_reused": reused,
  }


def format_summary(summary: dict[str, Any], max_skipped: int = 20) -> str:
  """Human-readable summary of `build_shards` output."""
  lines = [
      f"{summary['hours']:.3f} h in {summary['files']} files "
      f"({summary['shards_built']} shards built, {summary['shards_reused']} reused)"
  ]
  for split, s in sorted(summary["splits"].items()):
    lines.append(
        f"  {split:<10} {s['hours']:9.3f} h {s['files']:8d} files {s['records']:8d} records "
        f"{len(s['shards']):5d} shards {s['skipped']:6d} skipped "
        f"({s['skipped_segments']} segments skipped, {s['warnings']} warnings)"
    )
  for name, title in (("skipped", "files skipped"), ("skipped_segments", "segments skipped"),
                      ("warnings", "warnings (bad audio kept)")):  # fmt: skip
    entries = summary[name]
    if entries:
      lines.append(f"{len(entries)} {title}:")
      lines += [f"  {entry['reason']}" for entry in entries[:max_skipped]]
      if len(entries) > max_skipped:
        lines.append(f"  ... and {len(entries) - max_skipped} more (see summary.json)")
  return "\n".join(lines)


def read_index(shard_paths: Sequence[str]) -> list[dict[str, Any]]:
  """Per-record metadata of audio shards: from sidecars where present, else from the records."""
  metas = []
  for path in shard_paths:
    sidecar = read_sidecar(path)
    if sidecar is not None:
      metas.extend(sidecar["records"])
      continue
    for data in records.read_records(path):
      try:
        arrays, meta = records.decode_record(data)
      except records.CorruptRecordError:
        continue
      if "pcm" in arrays:
        pcm = audio.pcm16_to_float(arrays["pcm"])
        meta = {**_json_levels(audio.level_stats(pcm)), **meta}
        meta.setdefault("duration", pcm.size / audio.SAMPLE_RATE)
        metas.append(meta)
  return metas

