"""Grain input pipelines: codec training crops, codec validation, S2S codes and pairs.

Every training pipeline has the same shape:

```
all records ── shuffle(seed) ── repeat (new order every epoch)
  ── random_map(decode + crop/pad + normalise) ── every process_count-th element from
  process_index ── threads ── skip corrupt ── batch ── [worker processes]
```

* Sharding: every process walks the same global, seeded order of all records and keeps every
  `process_count`-th element starting at its own index, so processes read disjoint records and
  together cover each epoch exactly once. The global batch (the processes' local batches side
  by side) therefore holds the same examples whatever the number of processes: a run on 2
  hosts × 2 devices trains on the same batches as one on 1 host × 4 devices.
* Determinism: the batches are a function of (sources, seed, batch size, process count, number
  of workers). Random crops take their randomness from grain's per-element generator (keyed by
  the global position), so a record gets a fresh crop every epoch, identical on any layout.
* Checkpointing: the returned iterators support `get_state()`/`set_state()` and
  `grain.checkpoint.CheckpointSave/CheckpointRestore` inside an Orbax `Composite`; a restored
  iterator yields exactly the batches the original would have yielded next.
* Corrupt records (bad checksum, unreadable chunk, wrong shape) are logged with their shard and
  index, counted in the iterator state (`corrupt_records_skipped`) and skipped.

`sources` everywhere is a list of `.arrayrecord` shard paths (written by `records.py` or
`shards.py`), or a grain random-access data source such as `tfds.data_source(...)[split]` from
one of the builders in `tfds_builders/`, whose examples carry 16 kHz `audio` int16.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import grain
import numpy as np

from telugu_jax.data import audio
from telugu_jax.data import records
from telugu_jax.data import transcripts

Sources = Union[
    str, os.PathLike, Sequence[Union[str, os.PathLike]], grain.sources.RandomAccessDataSource
]

_READ_THREADS = 4


# ----------------------------------------------------------------------------------------------
# Sources and corrupt-record handling.


@dataclasses.dataclass(frozen=True)
class _Corrupt:
  """Stands in for a record that could not be used; dropped (and counted) before batching."""

  location: str
  error: str


class RecordSource(grain.sources.RandomAccessDataSource):
  """Random access to the records of many shards; item `i` is `(location, record)`.

  `record` is the raw bytes (or, for a TFDS source, the decoded example dict), or a `_Corrupt`
  if reading failed. `location` names the shard and record index for error messages. A shard
  whose index cannot be read at all is left out with an error in the log.
  """

  def __init__(self, sources: Sources):
    if isinstance(sources, (str, os.PathLike)):
      sources = [sources]
    if isinstance(sources, (list, tuple)) and all(
        isinstance(s, (str, os.PathLike)) for s in sources
    ):
      paths = [os.fspath(s) for s in sources]
      if not paths:
        raise ValueError("no shards given")
      missing = [p for p in paths if not os.path.isfile(p)]
      if missing:
        raise FileNotFoundError(f"shards not found: {missing}")
      self._paths, lengths = [], []
      for path in paths:
        try:
          (length,) = records.shard_lengths([path])
        except RuntimeError as e:  # A damaged index: no record of the shard is reachable.
          logging.error("Skipping unreadable shard %s: %s", path, e)
          continue
        self._paths.append(path)
        lengths.append(length)
      if not self._paths:
        raise ValueError(f"none of the {len(paths)} shards is readable")
      self._source = grain.sources.ArrayRecordDataSource(self._paths)
      self._starts = np.cumsum([0] + lengths).tolist()
    else:
      self._paths = None
      self._source = sources
      self._starts = [0, len(sources)]

  def __len__(self) -> int:
    return len(self._source)

  def location(self, index: int) -> str:
    """`"<shard path> record <k>"` for global record `index`."""
    if self._paths is None:
      return f"{self._source} record {index}"
    shard = bisect.bisect_right(self._starts, index) - 1
    return f"{self._paths[shard]} record {index - self._starts[shard]}"

  def __getitem__(self, index: int) -> tuple[str, Any]:
    location = self.location(index)
    try:
      return location, self._source[index]
    except Exception as e:  # The reader's error types are not part of its API.
      return location, _Corrupt(location, f"unreadable ({type(e).__name__}: {e})")

  def __repr__(self) -> str:
    what = f"{len(self._paths)} shards" if self._paths is not None else repr(self._source)
    return f"RecordSource({what}, {len(self)} records)"


def _decode(element: tuple[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | _Corrupt:
  """Raw record (bytes or TFDS example) -> `(arrays, meta)`, or `_Corrupt`."""
  location, data = element
  if isinstance(data, _Corrupt):
    return data
  if isinstance(data, Mapping):  # A TFDS example: audio int16 plus text features.
    arrays = {"pcm": np.asarray(data["audio"])} if "audio" in data else {}
    meta = {
        k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in data.items() if k != "audio"
    }
    return arrays, meta
  try:
    return records.decode_record(data)
  except records.CorruptRecordError as e:
    return _Corrupt(location, str(e))


def _decode_wave(element: tuple[str, Any]) -> np.ndarray | _Corrupt:
  decoded = _decode(element)
  if isinstance(decoded, _Corrupt):
    return decoded
  arrays, _ = decoded
  pcm = arrays.get("pcm")
  if pcm is None or pcm.ndim != 1 or pcm.dtype != np.int16:
    return _Corrupt(element[0], "not an audio record (no int16 'pcm' [T] array)")
  return audio.pcm16_to_float(pcm)


class SkipCorrupt(grain.IterDataset):
  """Drops `_Corrupt` elements, logging each and counting them in the iterator state."""

  def __init__(self, parent: grain.IterDataset, num_records: int):
    super().__init__(parent)
    self._num_records = num_records

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipCorruptIterator(self._parent.__iter__(), self._num_records)

  def __str__(self) -> str:
    return "SkipCorrupt"


class _SkipCorruptIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, num_records: int):
    super().__init__(parent)
    self._num_records = num_records
    self._skipped = 0

  def __next__(self):
    consecutive = 0
    while True:
      element = next(self._parent)
      if not isinstance(element, _Corrupt):
        return element
      self._skipped += 1
      consecutive += 1
      logging.warning(
          "Skipping corrupt record %s: %s (%d skipped so far)",
          element.location,
          element.error,
          self._skipped,
      )
      if consecutive > max(self._num_records, 1):
        raise RuntimeError(
            f"every one of the {self._num_records} records this reader sees is corrupt "
            f"(last: {element.location}: {element.error})"
        )

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "corrupt_records_skipped": self._skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._skipped = int(state["corrupt_records_skipped"])


def corrupt_records_skipped(iterator: grain.DatasetIterator) -> int:
  """How many corrupt records `iterator` has skipped so far (summed over its workers)."""

  def total(state: Any) -> int:
    if isinstance(state, Mapping):
      return sum(
          int(v) if k == "corrupt_records_skipped" else total(v) for k, v in state.items()
      )
    if isinstance(state, (list, tuple)):
      return sum(total(v) for v in state)
    return 0

  return total(iterator.get_state())


class LengthGroupedBatch(grain.IterDataset):
  """Batches of similar length: reads `window` batches' worth of elements, sorts them by
  `question_lengths + answer_lengths`, cuts them into batches and yields those in a random
  order (seeded per window). Padding to each batch's longest example then stays small.

  The state is the parent's state at the window's start and the batches already yielded from
  it: a restored iterator rereads the window and continues exactly.
  """

  def __init__(self, parent: grain.IterDataset, batch_size: int, window: int, seed: int):
    super().__init__(parent)
    self._batch_size, self._window, self._seed = batch_size, window, seed

  def __iter__(self) -> grain.DatasetIterator:
    return _LengthGroupedBatchIterator(self._parent.__iter__(), self._batch_size, self._window,
                                       self._seed)

  def __str__(self) -> str:
    return f"LengthGroupedBatch(batch_size={self._batch_size}, window={self._window})"


class _LengthGroupedBatchIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, batch_size: int, window: int, seed: int):
    super().__init__(parent)
    self._batch_size, self._window, self._seed = batch_size, window, seed
    self._window_index = 0  # windows read so far
    self._window_start: Any = None  # the parent's state before the current window
    self._batches: list[list[dict[str, np.ndarray]]] = []
    self._emitted = 0

  def _read_window(self) -> None:
    self._window_start = self._parent.get_state()
    elements = [next(self._parent) for _ in range(self._batch_size * self._window)]
    order = sorted(range(len(elements)), key=lambda i: (
        int(elements[i]["question_lengths"]) + int(elements[i]["answer_lengths"]), i))
    batches = [[elements[i] for i in order[k:k + self._batch_size]]
               for k in range(0, len(order), self._batch_size)]
    shuffle = np.random.default_rng([self._seed, self._window_index]).permutation(len(batches))
    self._batches = [batches[k] for k in shuffle]
    self._window_index += 1
    self._emitted = 0

  def __next__(self) -> dict[str, np.ndarray]:
    if self._emitted == len(self._batches):
      self._read_window()
    batch = self._batches[self._emitted]
    self._emitted += 1
    return {key: np.stack([element[key] for element in batch]) for key in batch[0]}

  def get_state(self) -> dict[str, Any]:
    if self._emitted == len(self._batches):  # between windows
      return {"parent": self._parent.get_state(), "window_index": self._window_index,
              "emitted": 0}
    return {"parent": self._window_start, "window_index": self._window_index - 1,
            "emitted": self._emitted}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._window_index = int(state["window_index"])
    self._batches, self._emitted = [], 0
    if int(state["emitted"]):
      self._read_window()
      self._emitted = int(state["emitted"])


# ----------------------------------------------------------------------------------------------
# Process sharding and the shared training-pipeline skeleton.


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # Only needed for the defaults; keeps grain workers free of JAX.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _training_iterator(
    sources: Sources,
    transform: grain.transforms.RandomMap,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    process_index: int | None,
    process_count: int | None,
    length_window: int = 0,
) -> grain.DatasetIterator:
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if length_window < 0:
    raise ValueError(f"length_window must be >= 0, got {length_window}")
  index, count = _resolve_processes(process_index, process_count)
  source = RecordSource(sources)
  if len(source) < count:
    raise ValueError(
        f"process {index} of {count} gets no records: {source!r} has fewer records than processes"
    )
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = ds.random_map(transform, seed=seed)
  ds = ds.slice(slice(index, None, count))
  it = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=2 * batch_size)
  )
  it = SkipCorrupt(it, num_records=len(source) // count)
  if length_window:
    it = LengthGroupedBatch(it, batch_size, length_window, seed)
  else:
    it = it.batch(batch_size, drop_remainder=True)
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


# ----------------------------------------------------------------------------------------------
# Codec training and validation.


NORMALIZE_MODES = ("crop", "utterance")


def _check_normalize(normalize: str) -> None:
  if normalize not in NORMALIZE_MODES:
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")


def _normalized_crop(wave: np.ndarray, length: int, start: int, normalize: str) -> np.ndarray:
  """`audio.normalize_rms` (the original's RMS -16 dB and clipping rule) of the crop
  (`normalize="crop"`, the original) or of the whole utterance before cropping ("utterance":
  the crop keeps its level within the utterance, so pauses stay quiet, as in a whole clip)."""
  if normalize == "utterance":
    return audio.crop_or_pad(audio.normalize_rms(wave), length, start)
  return audio.normalize_rms(audio.crop_or_pad(wave, length, start))


class CodecCrop(grain.transforms.RandomMap):
  """Record -> `{"audio": float32 [crop_samples]}`: random crop or end zero-pad, normalised
  (`_normalized_crop`)."""

  def __init__(self, crop_samples: int, normalize: str = "crop"):
    _check_normalize(normalize)
    self.crop_samples, self.normalize = crop_samples, normalize

  def random_map(self, element, rng: np.random.Generator):
    wave = _decode_wave(element)
    if isinstance(wave, _Corrupt):
      return wave
    start = audio.random_start(wave.shape[0], self.crop_samples, rng)
    return {"audio": _normalized_crop(wave, self.crop_samples, start, self.normalize)}


def codec_train_iterator(
    shard_paths: Sources,
    *,
    batch_size: int,
    crop_samples: int = audio.SAMPLE_RATE,
    normalize: str = "crop",
    seed: int = 0,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
  """Infinite, shuffled batches of normalised random crops for codec training.

  Args:
    shard_paths: audio shards (or a TFDS data source); see the module docstring.
    batch_size: examples per batch on this process.
    crop_samples: crop length in samples (16000 = the original's 1 s).
    normalize: "crop" (the original: every crop at -16 dBFS) or "utterance" (the utterance at
      -16 dBFS, its crops at their level within it).
    seed: shuffle and crop seed; the same seed gives the same batches.
    num_workers: grain worker processes (0 = decode in this process with threads). Workers need
      absl flags parsed and a `__main__` guard in the calling program.
    process_index: this process's index (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    A grain `DatasetIterator` of `{"audio": float32 [batch_size, crop_samples]}`; each epoch
    revisits this process's records in a new order with new crops.
  """
  return _training_iterator(
      shard_paths,
      CodecCrop(crop_samples, normalize),
      batch_size=batch_size,
      seed=seed,
      num_workers=num_workers,
      process_index=process_index,
      process_count=process_count,
  )


class EvalAudio(grain.transforms.Map):
  """Record -> normalised centre crop of `crop_samples` (`_normalized_crop`), or the whole
  normalised utterance."""

  def __init__(self, crop_samples: int | None, normalize: str = "crop"):
    _check_normalize(normalize)
    self.crop_samples, self.normalize = crop_samples, normalize

  def map(self, element):
    wave = _decode_wave(element)
    if isinstance(wave, _Corrupt):
      return wave
    if self.crop_samples is None:
      return {"audio": audio.normalize_rms(wave), "length": wave.shape[0]}
    start = max(0, (wave.shape[0] - self.crop_samples) // 2)
    return {"audio": _normalized_crop(wave, self.crop_samples, start, self.normalize),
            "length": min(wave.shape[0], self.crop_samples)}


class PadBatch:
  """Stacks eval examples into `[batch_size, L]` with padding rows and a `valid` flag.

  `L` is the crop length, or for whole utterances the longest one rounded up to `pad_multiple`.
  """

  def __init__(self, batch_size: int, pad_multiple: int):
    self.batch_size = batch_size
    self.pad_multiple = pad_multiple

  def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    longest = max(e["audio"].shape[0] for e in examples)
    width = self.pad_multiple * math.ceil(longest / self.pad_multiple)
    batch = empty_eval_batch(self.batch_size, width)
    for row, example in enumerate(examples):
      batch["audio"][row, : example["audio"].shape[0]] = example["audio"]
      batch["lengths"][row] = example["length"]
      batch["valid"][row] = True
    return batch


def empty_eval_batch(batch_size: int, width: int) -> dict[str, np.ndarray]:
  """An all-padding eval batch (every row invalid)."""
  return {
      "audio": np.zeros((batch_size, width), np.float32),
      "lengths": np.zeros((batch_size,), np.int32),
      "valid": np.zeros((batch_size,), bool),
  }


def codec_eval_batches(
    shard_paths: Sources,
    *,
    batch_size: int,
    crop_samples: int | None = None,
    normalize: str = "crop",
    pad_multiple: int = audio.SAMPLE_RATE,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic validation batches: each record once, in shard order (strided over processes).

  Args:
    shard_paths: audio shards (or a TFDS data source).
    batch_size: rows per batch on this process.
    crop_samples: `None` for whole utterances (each normalised as a whole, zero-padded to the
      batch's longest rounded up to `pad_multiple`), or a fixed centre crop of this length
      (end zero-padded when shorter), normalised like training crops.
    normalize: how crops are normalised, as for `codec_train_iterator`.
    pad_multiple: width granularity of whole-utterance batches (limits recompilation).
    process_index: this process's index (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Yields:
    `{"audio": float32 [batch_size, L], "lengths": int32 [batch_size], "valid": bool
    [batch_size]}`; padding rows have `valid=False` and length 0. Every process yields the same
    number of batches (so multi-host evaluation stays in step), padding with empty batches.
  """
  index, count = _resolve_processes(process_index, process_count)
  source = RecordSource(shard_paths)
  # Every process-th record, as in training: the global batch (the processes' batches side by
  # side) holds the same records on any number of processes.
  num_batches = math.ceil(math.ceil(len(source) / count) / batch_size)
  width = crop_samples or pad_multiple
  ds = grain.MapDataset.source(source).slice(slice(index, None, count)).map(
      EvalAudio(crop_samples, normalize))
  read_options = grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=2 * batch_size)
  it = SkipCorrupt(ds.to_iter_dataset(read_options), num_records=len(range(index, len(source), count)))
  it = it.batch(batch_size, drop_remainder=False, batch_fn=PadBatch(batch_size, width))
  produced = 0
  for batch in it:
    produced += 1
    yield batch
  for _ in range(num_batches - produced):
    yield empty_eval_batch(batch_size, width)


def folder_eval_clips(
    folder: str | os.PathLike, *, sample_rate: int = audio.SAMPLE_RATE, normalize: bool = False
) -> list[tuple[str, np.ndarray]]:
  """Every decodable clip below `folder` as `(relative name, float32 wave)`, sorted by name.

  For evaluation on real speech that was never trained on, e.g. `../shared/data/
  common-voice-te-dev` (MP3 at 32 kHz). Undecodable files are logged and skipped.

  Args:
    folder: searched recursively for `audio.AUDIO_EXTENSIONS`.
    sample_rate: output rate (resampled with soxr).
    normalize: apply `audio.normalize_rms` to each whole clip.

  Returns:
    `[(name, wave)]` with mono float32 waves at `sample_rate`.
  """
  folder = os.fspath(folder)
  clips = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for filename in sorted(filenames):
      if not filename.lower().endswith(audio.AUDIO_EXTENSIONS):
        continue
      path = os.path.join(dirpath, filename)
      name = os.path.relpath(path, folder).replace(os.sep, "/")
      try:
        wave = audio.load_audio(path, sample_rate, name=name)
      except audio.AudioDecodeError as e:
        logging.warning("Skipping evaluation clip: %s", e)
        continue
      clips.append((name, audio.normalize_rms(wave) if normalize else wave))
  return sorted(clips, key=lambda clip: clip[0])


# ----------------------------------------------------------------------------------------------
# S2S code sequences and question->answer pairs.


def _fit_codes(
    codes: np.ndarray, max_frames: int, pad_value: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, int]:
  """`[n_q, F]` -> `[n_q, max_frames]` int32 by a window (random if `rng`, else the start) or
  end padding with `pad_value`; returns the array and the number of real frames."""
  frames = codes.shape[1]
  if frames > max_frames:
    start = int(rng.integers(0, frames - max_frames + 1)) if rng is not None else 0
    return codes[:, start : start + max_frames].astype(np.int32), max_frames
  out = np.full((codes.shape[0], max_frames), pad_value, np.int32)
  out[:, :frames] = codes
  return out, frames


def _mask(length: int, max_frames: int) -> np.ndarray:
  return np.arange(max_frames) < length


class _CodesTransformBase(grain.transforms.RandomMap):

  def __init__(self, num_quantizers: int | None, pad_value: int, vocab_size: int | None = None):
    self.num_quantizers = num_quantizers
    self.pad_value = pad_value
    self.vocab_size = vocab_size

  def _arrays(self, element, names: Sequence[str]):
    decoded = _decode(element)
    if isinstance(decoded, _Corrupt):
      return decoded
    arrays, meta = decoded
    for name in names:
      codes = arrays.get(name)
      if codes is None or codes.ndim != 2:
        return _Corrupt(element[0], f"no [n_q, frames] array {name!r} in the record")
      if self.num_quantizers is not None and codes.shape[0] != self.num_quantizers:
        return _Corrupt(
            element[0], f"{name!r} has {codes.shape[0]} quantizers, expected {self.num_quantizers}"
        )
      if codes.shape[1] == 0:
        return _Corrupt(element[0], f"{name!r} has no frames")
      if self.vocab_size is not None and (codes.min() < 0 or codes.max() >= self.vocab_size):
        return _Corrupt(element[0], f"{name!r} holds codes outside [0, {self.vocab_size})")
    return arrays, meta

  @staticmethod
  def _style(meta: Mapping[str, Any]) -> dict[str, np.int32]:
    return {
        "speaker": np.int32(meta.get("speaker_id", 0)),
        "emotion": np.int32(meta.get("emotion_id", 0)),
    }


class CodesWindow(_CodesTransformBase):
  """Code record -> a random window of `max_frames` (or end-padded), mask, length, style ids."""

  def __init__(self, max_frames: int, num_quantizers: int | None = None, pad_value: int = 0):
    super().__init__(num_quantizers, pad_value)
    self.max_frames = max_frames

  def random_map(self, element, rng: np.random.Generator):
    decoded = self._arrays(element, ["codes"])
    if isinstance(decoded, _Corrupt):
      return decoded
    arrays, meta = decoded
    codes, length = _fit_codes(arrays["codes"], self.max_frames, self.pad_value, rng)
    return {
        "codes": codes,
        "mask": _mask(length, self.max_frames),
        "lengths": np.int32(length),
        **self._style(meta),
    }


class PairFit(_CodesTransformBase):
  """Pair record -> question and answer truncated (at the end) or end-padded, masks, style.

  With `max_text_tokens` > 0 also the question's transcript (`question_text` in the record's
  metadata) as character ids (`transcripts.fit`): `question_text` int32 `[max_text_tokens]` and
  `question_text_lengths`, 0 where there is no usable transcript (none, too long, or the
  question was truncated).
  """

  def __init__(
      self,
      max_question_frames: int,
      max_answer_frames: int,
      num_quantizers: int | None = None,
      pad_value: int = 0,
      vocab_size: int | None = None,
      max_text_tokens: int = 0,
  ):
    super().__init__(num_quantizers, pad_value, vocab_size)
    self.max_question_frames = max_question_frames
    self.max_answer_frames = max_answer_frames
    self.max_text_tokens = max_text_tokens

  def random_map(self, element, rng: np.random.Generator | None):
    del rng  # Pairs are kept whole (up to truncation); no randomness.
    decoded = self._arrays(element, ["question", "answer"])
    if isinstance(decoded, _Corrupt):
      return decoded
    arrays, meta = decoded
    example = _pair_example(arrays["question"], arrays["answer"], self.max_question_frames,
                            self.max_answer_frames, self.pad_value, meta, self._style(meta))
    if self.max_text_tokens > 0:
      frames = arrays["question"].shape[1]
      whole = frames if frames <= self.max_question_frames else 0
      example["question_text"], example["question_text_lengths"] = transcripts.fit(
          meta.get("question_text"), self.max_text_tokens, whole)
    return example


def _pair_example(question: np.ndarray, answer: np.ndarray, max_question_frames: int,
                  max_answer_frames: int, pad_value: int, meta: Mapping[str, Any],
                  style: dict[str, np.int32]) -> dict[str, Any]:
  question, q_len = _fit_codes(question, max_question_frames, pad_value, None)
  answer, a_len = _fit_codes(answer, max_answer_frames, pad_value, None)
  return {
      "question": question,
      "question_mask": _mask(q_len, max_question_frames),
      "question_lengths": np.int32(q_len),
      "answer": answer,
      "answer_mask": _mask(a_len, max_answer_frames),
      "answer_lengths": np.int32(a_len),
      **style,
  }


class UtteranceSplit(_CodesTransformBase):
  """Code record -> a pair made of one utterance cut in two (S2S stage 1, audio LM).

  The cut falls uniformly in `[min_question_frames, frames - 1]` (the middle when no generator
  is given, for evaluation); the question is the `max_question_frames` frames before the cut
  (end-padded when fewer), the answer the `max_answer_frames` frames from it. Utterances shorter
  than `min_question_frames + 1` frames are skipped as unusable. Same output as `PairFit`.
  """

  def __init__(self, max_question_frames: int, max_answer_frames: int,
               min_question_frames: int = 1, num_quantizers: int | None = None,
               pad_value: int = 0, vocab_size: int | None = None):
    super().__init__(num_quantizers, pad_value, vocab_size)
    self.max_question_frames = max_question_frames
    self.max_answer_frames = max_answer_frames
    self.min_question_frames = max(1, min_question_frames)

  def random_map(self, element, rng: np.random.Generator | None):
    decoded = self._arrays(element, ["codes"])
    if isinstance(decoded, _Corrupt):
      return decoded
    arrays, meta = decoded
    codes = arrays["codes"]
    frames = codes.shape[1]
    if frames <= self.min_question_frames:
      return _Corrupt(element[0], f"{frames} frames: too short to cut (needs more than "
                      f"{self.min_question_frames})")
    low, high = self.min_question_frames, frames - 1
    cut = int(rng.integers(low, high + 1)) if rng is not None else (low + high + 1) // 2
    question = codes[:, max(0, cut - self.max_question_frames):cut]
    return _pair_example(question, codes[:, cut:], self.max_question_frames,
                         self.max_answer_frames, self.pad_value, meta, self._style(meta))


def s2s_code_iterator(
    shard_paths: Sources,
    *,
    batch_size: int,
    max_frames: int,
    num_quantizers: int | None = None,
    pad_value: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
  """Infinite, shuffled batches of code sequences for S2S stage 1 (audio LM) and stage 3.

  Args:
    shard_paths: code shards from `records.write_code_shards`.
    batch_size: sequences per batch on this process.
    max_frames: sequence length; longer records give a random window, shorter are end-padded.
    num_quantizers: if set, records with another `n_q` are skipped as corrupt.
    pad_value: code used for padding (the original pads with code 0; use the mask).
    seed: shuffle and window seed.
    num_workers: grain worker processes (0 = in this process).
    process_index: this process's index (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    A grain `DatasetIterator` of `{"codes": int32 [B, n_q, max_frames], "mask": bool
    [B, max_frames], "lengths": int32 [B], "speaker": int32 [B], "emotion": int32 [B]}`.
  """
  return _training_iterator(
      shard_paths,
      CodesWindow(max_frames, num_quantizers, pad_value),
      batch_size=batch_size,
      seed=seed,
      num_workers=num_workers,
      process_index=process_index,
      process_count=process_count,
  )


def s2s_pair_iterator(
    shard_paths: Sources,
    *,
    batch_size: int,
    max_question_frames: int,
    max_answer_frames: int,
    num_quantizers: int | None = None,
    vocab_size: int | None = None,
    pad_value: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    length_window: int = 0,
    max_text_tokens: int = 0,
) -> grain.DatasetIterator:
  """Infinite, shuffled batches of question->answer code pairs for S2S stage 2.

  Args:
    shard_paths: pair shards from `records.write_code_shards`.
    batch_size: pairs per batch on this process.
    max_question_frames: question length; longer questions are truncated at the end.
    max_answer_frames: answer length; longer answers are truncated at the end.
    num_quantizers: if set, records with another `n_q` are skipped as corrupt.
    vocab_size: if set, records with codes outside `[0, vocab_size)` are skipped as corrupt.
    pad_value: code used for padding.
    seed: shuffle seed.
    num_workers: grain worker processes (0 = in this process).
    process_index: this process's index (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    length_window: 0, or batches of similar length: the examples of each run of
      `length_window` batches sorted by length before batching (`LengthGroupedBatch`).
    max_text_tokens: 0, or also the questions' transcripts as character ids (`PairFit`).

  Returns:
    A grain `DatasetIterator` of `{"question": int32 [B, n_q, Fq], "question_mask": bool [B, Fq],
    "question_lengths": int32 [B], "answer": int32 [B, n_q, Fa], "answer_mask": bool [B, Fa],
    "answer_lengths": int32 [B], "speaker": int32 [B], "emotion": int32 [B]}`, and with
    `max_text_tokens`, `"question_text": int32 [B, max_text_tokens]`,
    `"question_text_lengths": int32 [B]`.
  """
  return _training_iterator(
      shard_paths,
      PairFit(max_question_frames, max_answer_frames, num_quantizers, pad_value, vocab_size,
              max_text_tokens),
      batch_size=batch_size,
      seed=seed,
      num_workers=num_workers,
      process_index=process_index,
      process_count=process_count,
      length_window=length_window,
  )


def s2s_split_iterator(
    shard_paths: Sources,
    *,
    batch_size: int,
    max_question_frames: int,
    max_answer_frames: int,
    min_question_frames: int = 1,
    num_quantizers: int | None = None,
    vocab_size: int | None = None,
    pad_value: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    length_window: int = 0,
) -> grain.DatasetIterator:
  """Infinite, shuffled batches of utterances cut in two at a random point (S2S stage 1):
  the encoder reads the part before the cut, the decoder predicts the rest (`UtteranceSplit`).
  Arguments and output as `s2s_pair_iterator`; the cut is redrawn every epoch."""
  return _training_iterator(
      shard_paths,
      UtteranceSplit(max_question_frames, max_answer_frames, min_question_frames, num_quantizers,
                     pad_value, vocab_size),
      batch_size=batch_size,
      seed=seed,
      num_workers=num_workers,
      process_index=process_index,
      process_count=process_count,
      length_window=length_window,
  )


class _Deterministic(grain.transforms.Map):
  """A codes transform applied without randomness (middle cuts), for evaluation."""

  def __init__(self, transform: _CodesTransformBase):
    self.transform = transform

  def map(self, element):
    return self.transform.random_map(element, None)


def _stack_with_valid(batch_size: int):
  def stack(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    rows = list(examples) + [examples[0]] * (batch_size - len(examples))
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    batch["valid"] = np.arange(batch_size) < len(examples)
    return batch
  return stack


def s2s_eval_batches(
    shard_paths: Sources,
    transform: PairFit | UtteranceSplit,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic S2S validation batches: each record once, in shard order (strided over
  processes), through `transform` without randomness (utterances are cut in the middle).

  Yields the transform's batches plus `valid` bool `[batch_size]`; a last partial batch is
  filled with copies of its first row marked invalid, and every process yields the same number
  of batches (all-invalid ones at the end), so multi-host evaluation stays in step. Corrupt
  records are skipped and counted.
  """
  index, count = _resolve_processes(process_index, process_count)
  source = RecordSource(shard_paths)
  num_batches = math.ceil(math.ceil(len(source) / count) / batch_size)
  ds = grain.MapDataset.source(source).slice(slice(index, None, count)).map(
      _Deterministic(transform))
  read_options = grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=2 * batch_size)
  it = SkipCorrupt(ds.to_iter_dataset(read_options),
                   num_records=len(range(index, len(source), count)))
  last = None
  for last in it.batch(batch_size, drop_remainder=False, batch_fn=_stack_with_valid(batch_size)):
    num_batches -= 1
    yield last
  if last is not None:
    for _ in range(num_batches):
      yield {**last, "valid": np.zeros(batch_size, bool)}
