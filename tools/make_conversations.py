r"""Makes Telugu question -> answer audio pairs for S2S training, offline.

  # Synthesise 20,000 pairs from the bundled Telugu text set (espeak-ng + Festival):
  python tools/make_conversations.py --output=/data/conv --pairs=20000 --seed=0 --workers=8
  # ... and also encode them with a codec into pair shards for the S2S trainer:
  python tools/make_conversations.py --output=/data/conv --pairs=20000 --codec=runs/codec
  # Import recorded pairs (the original generator's pair_NNNNN/ layout, or a manifest):
  python tools/make_conversations.py --output=/data/mine --from_pairs=/data/pairs
  python tools/make_conversations.py --output=/data/mine --from_manifest=pairs.csv

Needs `apt-get install espeak-ng festival festvox-te-nsk` for synthesis. Texts, voices, emotion
prosody and splits are described in `telugu_jax/data/conversations.py`.

Output (`--output`):
  * `{split}-NNNNN-of-NNNNN.arrayrecord`: one record per pair with int16 16 kHz arrays
    `question_pcm` and `answer_pcm` and metadata (texts and English glosses, topic, template id,
    engines, voices, augmentations, speaker and emotion names and ids, split); splits `train`,
    `validation` (texts never in training) and `validation_voices` (training texts in held-out
    user voices); a `.json` sidecar per shard;
  * `manifest.jsonl` (one row per pair: the record metadata plus its shard and position) and
    `summary.json` (also printed): pairs per split, hours, topics, voices, engines, speakers,
    emotions, skipped inputs and the speed;
  * with `--codec=DIR` (a converted codec or a codec training workdir), `codes/` with the same
    shard names holding `question`/`answer` code pairs (`records.write_code_shards` records of
    RMS-normalised audio) for `pipelines.s2s_pair_iterator(records.list_shards(DIR + "/codes",
    "train"), ...)`.

Pair `i` of a run depends only on `--seed` and `i`, so runs are reproducible, and a larger
`--pairs` keeps the earlier pairs. Rerunning resumes: shards (written atomically) whose sidecar
matches are skipped. `--from_pairs` reads `pair_*/question.wav`, `answer.wav` (any audio
format) and `metadata.json` (`speaker_id`, `emotion_id`, optionally `split`, `question_text`,
`answer_text`); `--from_manifest` reads a `.csv`, `.tsv` or `.jsonl` with `question` and `answer`
paths (relative to the manifest) and optional `speaker`, `emotion` (names or ids), `split`,
`question_text`, `answer_text`. Imported audio is folded to mono and resampled to 16 kHz; pairs
without a split are hashed into train/validation; unreadable files are skipped and listed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tqdm
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telugu_jax.data import audio  # noqa: E402
from telugu_jax.data import conversations  # noqa: E402
from telugu_jax.data import records  # noqa: E402
from telugu_jax.data import shards  # noqa: E402

SHARD_FORMAT = "telugu_jax.conversation_shard/1"
CODES_FORMAT = "telugu_jax.conversation_codes/1"
MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"
CODES_DIR = "codes"
RENDER_BATCH = 32
"""Pairs synthesised per engine call batch (one Festival process each) inside a shard."""
_SHARD_NAME = re.compile(
    r"^(train|validation|validation_voices)-\d{5}-of-\d{5}\.arrayrecord(\.json)?$")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


@dataclasses.dataclass(frozen=True)
class ImportItem:
  """A recorded pair to import."""

  key: str
  question_path: str
  answer_path: str
  split: str
  speaker_id: int = 0
  emotion_id: int = 0
  question_text: str = ""
  answer_text: str = ""
  source: str = ""

  def to_json(self) -> dict[str, Any]:
    """The item and the size and modification time of its files (for fingerprints)."""
    stats = []
    for path in (self.question_path, self.answer_path):
      try:
        stat = os.stat(path)
        stats.append(f"{stat.st_size}:{stat.st_mtime_ns}")
      except OSError:
        stats.append("missing")
    return {**dataclasses.asdict(self), "files": stats}


Item = conversations.PairPlan | ImportItem


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One output shard: its path and the pairs that go in it."""

  path: str
  items: tuple[Item, ...]

  def fingerprint(self) -> str:
    """Hash of everything that decides the shard's content."""
    h = hashlib.sha256(SHARD_FORMAT.encode())
    for item in self.items:
      h.update(json.dumps(item.to_json(), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Inputs.


def _parse_id(value: Any, vocabulary: dict[str, int], what: str) -> int:
  """A speaker or emotion given as a name or an id; blank means 0."""
  if value is None or str(value).strip() == "":
    return 0
  text = str(value).strip()
  if text in vocabulary:
    return vocabulary[text]
  if re.fullmatch(r"\d+", text) and int(text) < len(vocabulary):
    return int(text)
  raise ValueError(f"unknown {what} {text!r} (expected one of {sorted(vocabulary)} or an id "
                   f"0..{len(vocabulary) - 1})")


def _parse_split(value: Any, key: str) -> str:
  text = str(value or "").strip().lower()
  if not text:
    return shards.split_for_key(key, conversations.VALIDATION_TEMPLATE_FRACTION)
  text = _SPLIT_ALIASES.get(text, text)
  if text not in conversations.SPLITS:
    raise ValueError(f"unknown split {value!r} (expected one of {conversations.SPLITS})")
  return text


def _find_audio(folder: str, stem: str) -> str:
  for ext in audio.AUDIO_EXTENSIONS:
    path = os.path.join(folder, stem + ext)
    if os.path.isfile(path):
      return path
  return os.path.join(folder, stem + ".wav")  # reported as missing when read


def read_pairs_folder(root: str) -> tuple[list[ImportItem], list[dict[str, str]]]:
  """The original generator's layout: `pair_*/question.wav`, `answer.wav`, `metadata.json`.

  Returns:
    `(items, skipped)`; a pair whose metadata is unreadable or names an unknown speaker, emotion
    or split is skipped with the reason (missing metadata means speaker 0, emotion 0).
  """
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root}: no such folder")
  items, skipped = [], []
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if not (name.startswith("pair_") and os.path.isdir(folder)):
      continue
    meta: dict[str, Any] = {}
    meta_path = os.path.join(folder, "metadata.json")
    try:
      if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
          meta = json.load(f)
        if not isinstance(meta, dict):
          raise ValueError("metadata.json is not a JSON object")
      items.append(ImportItem(
          key=name, question_path=_find_audio(folder, "question"),
          answer_path=_find_audio(folder, "answer"), split=_parse_split(meta.get("split"), name),
          speaker_id=_parse_id(meta.get("speaker_id"), records.SPEAKER_IDS, "speaker"),
          emotion_id=_parse_id(meta.get("emotion_id"), records.EMOTION_IDS, "emotion"),
          question_text=str(meta.get("question_text") or ""),
          answer_text=str(meta.get("answer_text") or ""), source="from_pairs"))
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
      skipped.append({"path": name, "reason": f"{name}: {e}"})
  return items, skipped


def read_pair_manifest(manifest: str) -> tuple[list[ImportItem], list[dict[str, str]]]:
  """A CSV/TSV/JSONL manifest of `question`, `answer` paths (+ speaker, emotion, split, texts).

  Returns:
    `(items, skipped)`; rows with an unknown speaker, emotion or split are skipped.

  Raises:
    ValueError: the manifest is not CSV/TSV/JSONL, lacks the `question`/`answer` columns, or
      holds invalid JSON (the message names the line).
  """
  manifest = os.path.abspath(manifest)
  base = os.path.dirname(manifest)
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
      if not {"question", "answer"} <= set(reader.fieldnames or ()):
        raise ValueError(f"{manifest}: header needs 'question' and 'answer' columns "
                         f"(found {reader.fieldnames})")
      rows = list(enumerate(reader, 2))
    else:
      raise ValueError(f"{manifest}: unsupported manifest type {ext!r} (use .csv, .tsv or .jsonl)")
  items, skipped = [], []
  for line_no, row in rows:
    where = f"{os.path.basename(manifest)}:{line_no}"
    try:
      if not isinstance(row, dict) or not row.get("question") or not row.get("answer"):
        raise ValueError("row needs 'question' and 'answer' paths")
      paths = [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
               for p in (str(row["question"]), str(row["answer"]))]
      key = str(row["question"]).replace(os.sep, "/")
      items.append(ImportItem(
          key=key, question_path=paths[0], answer_path=paths[1],
          split=_parse_split(row.get("split"), key),
          speaker_id=_parse_id(row.get("speaker"), records.SPEAKER_IDS, "speaker"),
          emotion_id=_parse_id(row.get("emotion"), records.EMOTION_IDS, "emotion"),
          question_text=str(row.get("question_text") or ""),
          answer_text=str(row.get("answer_text") or ""), source="from_manifest"))
    except ValueError as e:
      skipped.append({"path": where, "reason": f"{where}: {e}"})
  return items, skipped


def plan_tasks(items: Sequence[Item], output: str, shard_size: int) -> list[ShardTask]:
  """Groups items by split (in order) into shards of `shard_size`."""
  if shard_size <= 0:
    raise ValueError(f"shard_size must be positive, got {shard_size}")
  tasks = []
  for split in conversations.SPLITS:
    chosen = [item for item in items if item.split == split]
    n = -(-len(chosen) // shard_size)
    for s in range(n):
      name = f"{split}-{s:05d}-of-{n:05d}{records.SHARD_SUFFIX}"
      tasks.append(ShardTask(os.path.join(output, name),
                             tuple(chosen[s * shard_size : (s + 1) * shard_size])))
  return tasks


# ------------------------------------------------------------------------------------------------
# Shards.


def _voice_meta(voice: conversations.Voice) -> dict[str, Any]:
  return {"variant": voice.variant, "pitch": voice.pitch, "pitch_range": voice.pitch_range,
          "speed": voice.speed}


def _speaker_name(speaker_id: int) -> str:
  return {i: name for name, i in records.SPEAKER_IDS.items()}[speaker_id]


def _emotion_name(emotion_id: int) -> str:
  return {i: name for name, i in records.EMOTION_IDS.items()}[emotion_id]


def _synthetic_meta(plan: conversations.PairPlan) -> dict[str, Any]:
  return {
      "kind": "audio_pair", "key": plan.key, "split": plan.split, "source": "synthetic",
      "question_text": plan.text.question, "answer_text": plan.text.answer,
      "question_en": plan.text.question_en, "answer_en": plan.text.answer_en,
      "topic": plan.text.topic, "template_id": plan.text.template_id,
      "question_engine": plan.question_voice.engine, "question_voice": plan.question_voice.name,
      "question_voice_settings": _voice_meta(plan.question_voice),
      "answer_engine": plan.answer_voice.engine, "answer_voice": plan.answer_voice.name,
      "answer_voice_settings": _voice_meta(plan.answer_voice),
      "augment": conversations.augment_labels(plan.augment),
      "speaker": plan.speaker, "speaker_id": records.SPEAKER_IDS[plan.speaker],
      "emotion": plan.emotion, "emotion_id": records.EMOTION_IDS[plan.emotion],
  }  # fmt: skip


def _import_meta(item: ImportItem) -> dict[str, Any]:
  return {
      "kind": "audio_pair", "key": item.key, "split": item.split, "source": item.source,
      "question_text": item.question_text, "answer_text": item.answer_text,
      "question_en": "", "answer_en": "", "topic": "", "template_id": "",
      "question_engine": "recorded", "question_voice": "", "question_voice_settings": {},
      "answer_engine": "recorded", "answer_voice": "", "answer_voice_settings": {},
      "augment": [], "speaker": _speaker_name(item.speaker_id), "speaker_id": item.speaker_id,
      "emotion": _emotion_name(item.emotion_id), "emotion_id": item.emotion_id,
      "question_path": item.question_path, "answer_path": item.answer_path,
  }  # fmt: skip


def _render(items: Sequence[Item], workdir: str
            ) -> list[tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | str]]:
  """Per item, its metadata and `(question_pcm, answer_pcm)` or the reason it was skipped."""
  plans = [i for i in items if isinstance(i, conversations.PairPlan)]
  rendered = dict(zip((p.key for p in plans), conversations.render_pairs(plans, workdir)))
  out = []
  for item in items:
    if isinstance(item, conversations.PairPlan):
      result = rendered[item.key]
      out.append((_synthetic_meta(item),
                  f"{item.key}: {result}" if isinstance(result, Exception) else result))
      continue
    try:
      waves = [audio.float_to_pcm16(audio.load_audio(p, name=f"{item.key}/{os.path.basename(p)}"))
               for p in (item.question_path, item.answer_path)]
      if min(w.size for w in waves) == 0:
        raise audio.AudioDecodeError(f"{item.key}: shorter than one sample at 16 kHz")
      out.append((_import_meta(item), (waves[0], waves[1])))
    except audio.AudioDecodeError as e:
      out.append((_import_meta(item), str(e)))
  return out


def build_shard(task: ShardTask, on_pairs: Callable[[int], None] | None = None
                ) -> dict[str, Any]:
  """Renders or reads the pairs of one shard, writes it atomically and then its sidecar.

  Args:
    task: the shard.
    on_pairs: called with the number of pairs done after each batch (progress).

  Returns:
    The sidecar dict (also written to `<shard>.json`): fingerprint, the metadata of every
    record (`rows`), seconds of question and answer audio, and the skipped pairs with reasons.
  """
  rows, skipped = [], []
  seconds = {"question": 0.0, "answer": 0.0}
  with tempfile.TemporaryDirectory(prefix="tj-conv-") as workdir, \
      records.ShardWriter(task.path) as writer:
    for start in range(0, len(task.items), RENDER_BATCH):
      batch = task.items[start : start + RENDER_BATCH]
      for meta, result in _render(batch, workdir):
        if isinstance(result, str):
          skipped.append({"path": meta["key"], "reason": result})
          continue
        question, answer = result
        meta.update(sample_rate=audio.SAMPLE_RATE,
                    question_duration=question.size / audio.SAMPLE_RATE,
                    answer_duration=answer.size / audio.SAMPLE_RATE)
        writer.write(records.encode_record({"question_pcm": question, "answer_pcm": answer},
                                           meta))
        rows.append({**meta, "shard": os.path.basename(task.path), "record": len(rows)})
        seconds["question"] += meta["question_duration"]
        seconds["answer"] += meta["answer_duration"]
      if on_pairs is not None:
        on_pairs(len(batch))
  sidecar = {"format": SHARD_FORMAT, "fingerprint": task.fingerprint(), "rows": rows,
             "num_records": len(rows), "seconds": seconds, "skipped": skipped}
  _write_json(task.path + ".json", sidecar)
  return sidecar


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1, allow_nan=False)
  os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _finished(task: ShardTask, sidecar_path: str, fmt: str, **expected: str
              ) -> dict[str, Any] | None:
  sidecar = _read_json(sidecar_path)
  if (sidecar is None or sidecar.get("format") != fmt
      or sidecar.get("fingerprint") != task.fingerprint()
      or any(sidecar.get(k) != v for k, v in expected.items())):
    return None
  return sidecar


def _remove_stale(folder: str, tasks: Sequence[ShardTask]) -> None:
  """Deletes shards and sidecars of another plan and temporary files of interrupted runs."""
  if not os.path.isdir(folder):
    return
  wanted = {os.path.basename(t.path) for t in tasks}
  for name in os.listdir(folder):
    stale_shard = _SHARD_NAME.match(name) and name.removesuffix(".json") not in wanted
    if stale_shard or ".tmp-" in name:
      path = os.path.join(folder, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)


# ------------------------------------------------------------------------------------------------
# Codes.


def _codec_fingerprint(codec) -> str:
  h = hashlib.sha256(codec.config_hash.encode())
  for leaf in _leaves(codec.variables):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def _leaves(tree: Any) -> list[np.ndarray]:
  if isinstance(tree, dict):
    return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
  return [np.asarray(tree)]


def encode_codes(tasks: Sequence[ShardTask], output: str, codec_dir: str,
                 progress: bool = True) -> dict[str, Any]:
  """Encodes every audio shard into a code pair shard of the same name in `output/codes/`.

  Args:
    tasks: the audio shards (all finished).
    output: the output folder.
    codec_dir: a converted codec checkpoint or a codec training workdir.
    progress: show a progress bar.

  Returns:
    `{"dir", "codec", "shards", "built", "records", "num_quantizers"}`.
  """
  from telugu_jax import inference  # Imported here: only this step needs JAX.

  codec = inference.load_codec(codec_dir)
  codec_id = _codec_fingerprint(codec)
  codes_dir = os.path.join(output, CODES_DIR)
  os.makedirs(codes_dir, exist_ok=True)
  _remove_stale(codes_dir, tasks)
  built = num_records = 0
  for task in tqdm.tqdm(tasks, desc="codec", unit="shard", disable=not progress):
    path = os.path.join(codes_dir, os.path.basename(task.path))
    done = _finished(task, path + ".json", CODES_FORMAT, codec=codec_id)
    if done is not None:
      num_records += done["num_records"]
      continue
    examples = []
    for data in records.read_records(task.path):
      arrays, meta = records.decode_record(data)
      codes = [codec.encode(audio.normalize_rms(audio.pcm16_to_float(arrays[name]))[None])[0]
               for name in ("question_pcm", "answer_pcm")]
      examples.append({
          "question": codes[0], "answer": codes[1], "speaker_id": meta["speaker_id"],
          "emotion_id": meta["emotion_id"], "key": meta["key"], "split": meta["split"],
          "source": meta["source"], "topic": meta["topic"], "template_id": meta["template_id"],
          "question_text": meta["question_text"], "answer_text": meta["answer_text"]})
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=codes_dir)
    try:
      written = records.write_code_shards(examples, tmp, split="pairs",
                                          records_per_shard=max(1, len(examples)))
      if written:
        os.replace(written[0], path)
      elif os.path.exists(path):
        os.remove(path)
    finally:
      shutil.rmtree(tmp)
    _write_json(path + ".json", {"format": CODES_FORMAT, "fingerprint": task.fingerprint(),
                                 "codec": codec_id, "num_records": len(examples)})
    built += 1
    num_records += len(examples)
  return {"dir": codes_dir, "codec": os.path.abspath(codec_dir), "shards": len(tasks),
          "built": built, "records": num_records, "num_quantizers": codec.num_quantizers}


# ------------------------------------------------------------------------------------------------
# The run.


def make_conversations(
    output: str,
    *,
    pairs: int | None = None,
    seed: int = 0,
    from_pairs: str | None = None,
    from_manifest: str | None = None,
    codec: str | None = None,
    shard_size: int = 256,
    workers: int = 1,
    augment: float = 0.5,
    validation_voices_fraction: float = 0.05,
    topics: Sequence[str] = (),
    fixed_only: bool = False,
    speakers: Sequence[str] = (),
    emotions: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
  """Makes (or resumes) a folder of question -> answer pair shards; see the module docstring.

  Args:
    output: the output folder.
    pairs: number of synthetic pairs (exclusive with `from_pairs` and `from_manifest`).
    seed: the synthetic run's seed.
    from_pairs: a folder of `pair_*/` recordings to import instead.
    from_manifest: a CSV/TSV/JSONL manifest of recorded pairs to import instead.
    codec: a codec checkpoint: also write code pair shards to `output/codes/`.
    shard_size: pairs per shard.
    workers: shards built in parallel (processes).
    augment: probability that a synthetic question is augmented.
    validation_voices_fraction: share of training-text pairs spoken by held-out user voices.
    topics: only these topics of the text set (default all).
    fixed_only: only templates without slots (one text each).
    speakers: assistant speakers to draw answers from (default all four).
    emotions: emotions to draw answers from (default all that fit each answer).
    progress: show progress bars.

  Returns:
    The summary (also written to `output/summary.json`).
  """
  if sum(x is not None for x in (pairs, from_pairs, from_manifest)) != 1:
    raise ValueError("give exactly one of --pairs, --from_pairs and --from_manifest")
  started = time.time()
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  input_skipped: list[dict[str, str]] = []
  text_version = None
  if pairs is not None:
    if pairs <= 0:
      raise ValueError(f"--pairs must be positive, got {pairs}")
    conversations.check_engines()
    for name in speakers:
      if name not in records.SPEAKER_IDS:
        raise ValueError(f"unknown speaker {name!r}; the speakers are "
                         f"{sorted(records.SPEAKER_IDS)}")
    for name in emotions:
      if name not in records.EMOTION_IDS:
        raise ValueError(f"unknown emotion {name!r}; the emotions are "
                         f"{sorted(records.EMOTION_IDS)}")
    text_set = conversations.TextSet.load().restricted(topics, fixed_only)
    text_version = text_set.version
    items: list[Item] = [
        conversations.plan_pair(text_set, seed, i, augment_prob=augment,
                                validation_voices_fraction=validation_voices_fraction,
                                speakers=speakers, emotions=emotions)
        for i in range(pairs)]
    source = "synthetic"
  elif from_pairs is not None:
    items, input_skipped = read_pairs_folder(from_pairs)
    source = "from_pairs"
  else:
    items, input_skipped = read_pair_manifest(from_manifest)
    source = "from_manifest"
  tasks = plan_tasks(items, output, shard_size)
  _remove_stale(output, tasks)
  sidecars: dict[str, dict[str, Any]] = {}
  todo = []
  for task in tasks:
    done = _finished(task, task.path + ".json", SHARD_FORMAT)
    if done is not None and os.path.isfile(task.path):
      sidecars[task.path] = done
    else:
      todo.append(task)
  bar = tqdm.tqdm(total=sum(len(t.items) for t in todo), desc="pairs", unit="pair",
                  disable=not progress)
  if workers > 1 and len(todo) > 1:
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited threads
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), context) as pool:
      futures = {pool.submit(build_shard, task): task for task in todo}
      for future in concurrent.futures.as_completed(futures):
        sidecars[futures[future].path] = future.result()
        bar.update(len(futures[future].items))
  else:
    for task in todo:
      sidecars[task.path] = build_shard(task, bar.update)
  bar.close()
  made_seconds = time.time() - started
  codes = encode_codes(tasks, output, codec, progress) if codec else None
  rows = [row for task in tasks for row in sidecars[task.path]["rows"]]
  with open(os.path.join(output, MANIFEST_NAME + ".tmp"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
  os.replace(os.path.join(output, MANIFEST_NAME + ".tmp"), os.path.join(output, MANIFEST_NAME))
  made = sum(len(t.items) for t in todo)
  summary = _summarize(rows, tasks, sidecars, input_skipped)
  summary.update(
      output=output, source=source, seed=seed if source == "synthetic" else None,
      text_version=text_version,
      shards={"total": len(tasks), "built": len(todo), "already_finished": len(tasks) - len(todo)},
      pairs_made_now=made, seconds=round(time.time() - started, 1),
      pairs_per_second=round(made / made_seconds, 2) if made else None, codes=codes)
  _write_json(os.path.join(output, SUMMARY_NAME), summary)
  return summary


def _summarize(rows: Sequence[dict[str, Any]], tasks: Sequence[ShardTask],
               sidecars: dict[str, dict[str, Any]], input_skipped: Sequence[dict[str, str]]
               ) -> dict[str, Any]:
  def count(key: str) -> dict[str, int]:
    return dict(collections.Counter(r[key] for r in rows).most_common())

  return {
      "pairs": {split: sum(r["split"] == split for r in rows) for split in conversations.SPLITS},
      "total_pairs": len(rows),
      "hours": {part: round(sum(r[f"{part}_duration"] for r in rows) / 3600, 4)
                for part in ("question", "answer")},
      "topics": count("topic"),
      "templates": len({r["template_id"] for r in rows if r["template_id"]}),
      "distinct_texts": len({(r["question_text"], r["answer_text"]) for r in rows}),
      "question_engines": count("question_engine"),
      "answer_engines": count("answer_engine"),
      "user_voices": len({r["question_voice"] for r in rows if r["question_voice"]}),
      "speakers": count("speaker"),
      "emotions": count("emotion"),
      "augmented_questions": sum(bool(r["augment"]) for r in rows),
      "skipped": list(input_skipped) + [s for t in tasks for s in sidecars[t.path]["skipped"]],
  }


def format_summary(summary: dict[str, Any], max_skipped: int = 20) -> str:
  """A human-readable summary."""
  lines = [
      f"{summary['total_pairs']} pairs in {summary['output']} ({summary['source']}): "
      + ", ".join(f"{split} {n}" for split, n in summary["pairs"].items()),
      f"audio: {summary['hours']['question']:.2f} h of questions, "
      f"{summary['hours']['answer']:.2f} h of answers",
  ]
  if summary["source"] == "synthetic":
    lines += [
        f"texts: {summary['distinct_texts']} distinct pairs from {summary['templates']} "
        f"templates (text set {summary['text_version']}, seed {summary['seed']})",
        "topics: " + ", ".join(f"{k} {v}" for k, v in summary["topics"].items()),
        f"questions: {summary['user_voices']} user voices, engines "
        + ", ".join(f"{k} {v}" for k, v in summary["question_engines"].items())
        + f"; {summary['augmented_questions']} augmented",
    ]
  lines += [
      "speakers: " + ", ".join(f"{k} {v}" for k, v in summary["speakers"].items()),
      "emotions: " + ", ".join(f"{k} {v}" for k, v in summary["emotions"].items()),
      f"shards: {summary['shards']['total']} ({summary['shards']['built']} built, "
      f"{summary['shards']['already_finished']} already finished); "
      f"{summary['pairs_made_now']} pairs made in {summary['seconds']} s"
      + (f" ({summary['pairs_per_second']} pairs/s)" if summary["pairs_per_second"] else ""),
  ]
  if summary["codes"]:
    codes = summary["codes"]
    lines.append(f"codes: {codes['records']} pairs x {codes['num_quantizers']} levels in "
                 f"{codes['dir']} ({codes['built']} of {codes['shards']} shards encoded now)")
  if summary["skipped"]:
    lines.append(f"skipped {len(summary['skipped'])}:")
    lines += [f"  {s['reason']}" for s in summary["skipped"][:max_skipped]]
    if len(summary["skipped"]) > max_skipped:
      lines.append(f"  ... and {len(summary['skipped']) - max_skipped} more (see summary.json)")
  return "\n".join(lines)


_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_PAIRS = flags.DEFINE_integer("pairs", None, "Number of synthetic pairs to make.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic pairs.")
_FROM_PAIRS = flags.DEFINE_string("from_pairs", None, "Import a folder of pair_*/ recordings.")
_FROM_MANIFEST = flags.DEFINE_string(
    "from_manifest", None, "Import the pairs of a .csv/.tsv/.jsonl manifest.")
_CODEC = flags.DEFINE_string(
    "codec", None, "Codec checkpoint or workdir: also write code pair shards to OUTPUT/codes.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Pairs per shard.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Shards built in parallel (processes).")
_AUGMENT = flags.DEFINE_float(
    "augment", 0.5, "Probability that a synthetic question gets noise/reverb/band-limiting.")
_VALIDATION_VOICES = flags.DEFINE_float(
    "validation_voices_fraction", 0.05, "Share of training texts spoken by held-out voices.")
_TOPICS = flags.DEFINE_list("topics", [], "Only these topics of the text set (default all).")
_FIXED_ONLY = flags.DEFINE_bool("fixed_only", False,
                                "Only templates without slots (one text each).")
_SPEAKERS = flags.DEFINE_list("speakers", [], "Assistant speakers of the answers (default all).")
_EMOTIONS = flags.DEFINE_list("emotions", [], "Emotions of the answers (default all that fit).")
flags.mark_flag_as_required("output")


def main(argv):
  del argv
  try:
    summary = make_conversations(
        _OUTPUT.value, pairs=_PAIRS.value, seed=_SEED.value, from_pairs=_FROM_PAIRS.value,
        from_manifest=_FROM_MANIFEST.value, codec=_CODEC.value, shard_size=_SHARD_SIZE.value,
        workers=_WORKERS.value, augment=_AUGMENT.value,
        validation_voices_fraction=_VALIDATION_VOICES.value, topics=_TOPICS.value,
        fixed_only=_FIXED_ONLY.value, speakers=_SPEAKERS.value, emotions=_EMOTIONS.value)
  except (conversations.SynthesisError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(format_summary(summary))


if __name__ == "__main__":
  app.run(main)
