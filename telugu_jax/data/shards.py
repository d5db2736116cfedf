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
    metadata and level statistics, and every skipped file with the reason;
  * `summary.json`: totals per split (hours, files, records) and the skipped files.

A shard whose sidecar exists and whose fingerprint matches the current inputs is not rebuilt,
so an interrupted build resumes where it stopped. Corrupt, empty or unreadable files are
skipped and listed, never fatal.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import tqdm

from telugu_jax.data import audio
from telugu_jax.data import records

SIDECAR_FORMAT = "telugu_jax.audio_shard/1"
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


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """The files of one output shard."""

  path: str
  items: tuple[SourceItem, ...]
  max_seconds: float

  def fingerprint(self) -> str:
    """Hash of the inputs (paths, metadata, sizes, modification times) and settings."""
    h = hashlib.sha256(f"{SIDECAR_FORMAT}|{self.max_seconds}".encode())
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
      tasks.append(ShardTask(os.path.join(os.fspath(output_dir), name), chunk, max_seconds))
  return tasks


def _segments(length: int, max_samples: int) -> list[tuple[int, int]]:
  """Equal cuts of `length` samples, none longer than `max_samples`."""
  n = max(1, -(-length // max_samples))
  bounds = [round(i * length / n) for i in range(n + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def build_shard(task: ShardTask) -> dict[str, Any]:
  """Decodes the files of one shard and writes it with its sidecar. Runs in worker processes.

  Args:
    task: the shard to build.

  Returns:
    The sidecar dict (also written to `<shard>.json`).
  """
  kept, skipped = [], []
  seconds = 0.0
  with records.ShardWriter(task.path) as writer:
    for item in task.items:
      try:
        samples, rate = audio.read_audio(item.path, name=item.key)
        stats = audio.level_stats(samples)
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
      cuts = _segments(pcm.size, max(1, int(task.max_seconds * audio.SAMPLE_RATE)))
      for index, (start, end) in enumerate(cuts):
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
            **stats,
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
  }
  _write_json(task.path + ".json", sidecar)
  return sidecar


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1, allow_nan=True)
  os.replace(tmp, path)


def read_sidecar(shard_path: str) -> dict[str, Any] | None:
  """The sidecar of a finished shard, or None if there is none (or it is unreadable)."""
  try:
    with open(shard_path + ".json", encoding="utf-8") as f:
      sidecar = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return sidecar if sidecar.get("format") == SIDECAR_FORMAT else None


def _is_finished(task: ShardTask) -> dict[str, Any] | None:
  sidecar = read_sidecar(task.path)
  if sidecar is None or not os.path.isfile(task.path):
    return None
  return sidecar if sidecar.get("fingerprint") == task.fingerprint() else None


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
    progress: show a tqdm progress bar.

  Returns:
    The summary (also written to `summary.json`): per-split hours/files/records/shards, the
    skipped files with reasons, and the shard counts built now and reused.
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
  tasks = plan_shards(items, output_dir, shard_size=shard_size, max_seconds=max_seconds)
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
  skipped = []
  for task in tasks:
    sidecar = sidecars[task.path]
    split = os.path.basename(task.path).split("-", 1)[0]
    entry = splits.setdefault(
        split, {"shards": [], "files": 0, "records": 0, "hours": 0.0, "skipped": 0}
    )
    entry["shards"].append(os.path.basename(task.path))
    entry["files"] += sidecar["files"] - len(sidecar["skipped"])
    entry["records"] += sidecar["num_records"]
    entry["hours"] += sidecar["seconds"] / 3600.0
    entry["skipped"] += len(sidecar["skipped"])
    skipped.extend(sidecar["skipped"])
  return {
      "splits": splits,
      "hours": sum(s["hours"] for s in splits.values()),
      "files": sum(s["files"] for s in splits.values()),
      "skipped": skipped,
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
        f"{len(s['shards']):5d} shards {s['skipped']:6d} skipped"
    )
  if summary["skipped"]:
    lines.append(f"{len(summary['skipped'])} files skipped:")
    for entry in summary["skipped"][:max_skipped]:
      lines.append(f"  {entry['reason']}")
    if len(summary["skipped"]) > max_skipped:
      lines.append(f"  ... and {len(summary['skipped']) - max_skipped} more (see summary.json)")
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
        meta = {**audio.level_stats(pcm), **meta}
        meta.setdefault("duration", pcm.size / audio.SAMPLE_RATE)
        metas.append(meta)
  return metas

