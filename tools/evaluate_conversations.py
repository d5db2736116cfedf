"""Proof that a trained S2S model answers: held-out conversation pairs, answered and scored.

    python tools/evaluate_conversations.py --codec=CODEC --s2s=S2S --pairs=PAIRS_DIR \\
        --output=report/ [--split=validation_voices,validation] [--max_pairs=N] \\
        [--temperature=0 | --beam_size=8] [--max_seconds=10] [--references=codec|original] \\
        [--postfilter=pitch,formant]

`--pairs` is a folder of audio pair shards written by `tools/make_conversations.py`
(`{split}-NNNNN-of-NNNNN.arrayrecord`, records with int16 16 kHz `question_pcm` and `answer_pcm`
and metadata with `answer_text`, `speaker_id`, `emotion_id`, `key`). Per split
(`validation_voices`: training texts asked in held-out voices; `validation`: texts never seen in
training), the first `--max_pairs` pairs are answered with `telugu_jax.inference.Responder`
(question level-normalised, encoded, answered in the pair's speaker and emotion, greedy by
default or by beam search with `--beam_size`, decoded by the same codec; `--postfilter` runs
the named post-filters of `inference.postfilter` on each decoded answer, as `respond` does).

**Which answer did the model give?** The candidates of a pair are all distinct answer texts of
its split, each in the pair's (assistant) speaker's voice. The references are the pair shards'
own answer audio: the first pair of the split (in shard order) with a given answer text and
speaker provides the reference of that text in that voice, so there is one reference per
distinct answer text and speaker, and a text that this speaker never says in the split is not
one of the pair's candidates (a pair without an answer text counts as a text of its own). With
`--references=codec` (the default) the references are encoded and decoded by the same codec,
so that codec distortion, which every generated answer carries, favours no candidate (and
through the same post-filters as the answers);
`--references=original` compares against the recorded audio itself. The distance between two
waves is dynamic time warping (`librosa.sequence.dtw`) on normalised log-mel frames (80 bands,
64 ms windows, 16 ms hop; each frame's dB values minus their mean over the bands, over their
standard deviation: the spectral shape, independent of the level; see `log_mel`), with the
Euclidean frame distance, divided by the warping path's length. The answer is right when the
nearest candidate is the pair's answer text (ties count as wrong); chance is the mean of
1 / number of candidates. The DTW distance, MCD and duration ratio "to the right answer" are
measured against that candidate's reference.

Writes to `--output`: `report.md` (a table per split), `per_pair.csv`, `summary.json`, and for
the first `--num_samples` pairs of each split the question, answer and reference as WAVs
(`samples/`) and answer-vs-reference spectrograms (`spectrograms/`). Per split it reports the
answer accuracy against chance, the rank of the right answer, the DTW distance and the
mel-cepstral distortion (MCD: MFCCs 1..13 aligned by DTW, in dB) to the right answer's
reference, the fraction of answers that end (end-of-speech before `--max_seconds`), the answer
duration over the reference's, DNSMOS of the answers and the real-time factor. Corrupt records
and unanswerable questions are skipped and listed; the exit code is 1 when no pair could be
answered or the checkpoints do not match.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import math
import os
import sys
import time

import librosa
import numpy as np
import soundfile
from tqdm import tqdm

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 256
N_MELS = 80
FLOOR_DB = 80.0
SPLITS = ("train", "validation", "validation_voices")
DNSMOS = ("ovrl", "sig", "bak", "p808")
COLUMNS = ("split", "key", "speaker_id", "emotion_id", "answer_text", "predicted_text",
           "correct", "rank", "candidates", "dtw_right", "dtw_nearest", "mcd", "frames", "ended",
           "answer_seconds", "reference_seconds", "duration_ratio",
           *(f"dnsmos_{k}" for k in DNSMOS), "rtf")


# ------------------------------------------------------------------------------------------------
# Scoring.


def _padded(wave: np.ndarray) -> np.ndarray:
  """float32, zero-padded to at least one analysis window (very short answers)."""
  wave = np.asarray(wave, np.float32)
  return np.pad(wave, (0, max(0, N_FFT - wave.size)))


def log_mel(wave: np.ndarray) -> np.ndarray:
  """Normalised log-mel frames `[frames, 80]`: each frame's spectral shape, whatever its level.

  Log-mel power in dB (floored 80 dB below the wave's loudest bin), then each frame minus its
  mean over the bands, over its standard deviation (at least 1 dB, so that a silent frame is all
  zeros), scaled by `1 / sqrt(2 * 80)`: the Euclidean distance of two frames is then
  `sqrt(1 - r)` with `r` their correlation across bands (0 for the same shape), and that of a
  silent and a sounding frame `sqrt(1 / 2)`. Stationary noise only shrinks the correlation with
  the right frames, instead of swamping every distance as in raw dB.
  """
  mel = librosa.feature.melspectrogram(y=_padded(wave), sr=SAMPLE_RATE, n_fft=N_FFT,
                                       hop_length=HOP, n_mels=N_MELS)
  db = librosa.power_to_db(mel, ref=np.max, top_db=FLOOR_DB)
  shape = (db - db.mean(axis=0)) / np.maximum(db.std(axis=0), 1.0)
  return (shape / np.sqrt(2.0 * N_MELS)).T


def mfcc(wave: np.ndarray) -> np.ndarray:
  """MFCCs 1..13 `[frames, 13]` in dB units (c0, the level, left out)."""
  coefficients = librosa.feature.mfcc(y=_padded(wave), sr=SAMPLE_RATE, n_mfcc=14, n_fft=N_FFT,
                                      hop_length=HOP, n_mels=N_MELS)
  return coefficients[1:].T


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
  """DTW distance of two feature sequences `[frames, dims]`, divided by the path length."""
  cost, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
  return float(cost[-1, -1] / len(path))


def mel_cepstral_distortion(reference: np.ndarray, estimate: np.ndarray) -> float:
  """MCD in dB between two waves: MFCCs 1..13 aligned by DTW, averaged along the path.

  `10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)` for natural-log cepstra; librosa's MFCCs are
  already in dB (10 log10), so this is `sqrt(2 * sum_d (c_d - c'_d)^2)` of them.
  """
  a, b = mfcc(reference), mfcc(estimate)
  _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
  diff = a[path[:, 0]] - b[path[:, 1]]
  return float(np.mean(np.sqrt(2.0 * np.sum(diff ** 2, axis=1))))


def rank_of(distances: np.ndarray, right: int) -> int:
  """1-based rank of candidate `right` by distance, ties counted against it."""
  distances = np.asarray(distances, np.float64)
  return int(np.sum(distances <= distances[right]))


# ------------------------------------------------------------------------------------------------
# Pairs and references.


@dataclasses.dataclass
class Pair:
  """One question -> answer pair of a pair shard (int16 16 kHz audio)."""

  split: str
  key: str
  speaker_id: int
  emotion_id: int
  answer_text: str
  question_pcm: np.ndarray
  answer_pcm: np.ndarray

  @property
  def identity(self) -> str:
    """What the answer says: its text, or its key when the pair has no text."""
    return self.answer_text or f"<{self.key}>"


def read_pairs(folder: str, split: str) -> tuple[list[Pair], list[str]]:
  """The pairs of one split's shards in order, and the records skipped (with the reason)."""
  from telugu_jax.data import records

  pairs, skipped = [], []
  for path in records.list_shards(folder, split):
    name = os.path.basename(path)
    try:
      data = records.read_records(path)
    except Exception as e:  # The reader's error types are not part of its API.
      skipped.append(f"{name}: unreadable shard ({type(e).__name__}: {e})")
      continue
    for index, record in enumerate(data):
      where = f"{name}#{index}"
      try:
        arrays, meta = records.decode_record(record)
        question, answer = arrays["question_pcm"], arrays["answer_pcm"]
        if question.ndim != 1 or answer.ndim != 1 or not question.size or not answer.size:
          raise ValueError("empty question or answer audio")
        pairs.append(Pair(split, str(meta.get("key", where)), int(meta.get("speaker_id", 0)),
                          int(meta.get("emotion_id", 0)), str(meta.get("answer_text") or ""),
                          question, answer))
      except (KeyError, ValueError, TypeError) as e:  # CorruptRecordError is a ValueError.
        skipped.append(f"{where}: {type(e).__name__}: {e}")
  return pairs, skipped


@dataclasses.dataclass
class Reference:
  """The reference rendering of one answer text in one speaker's voice."""

  identity: str
  wave: np.ndarray
  features: np.ndarray
  seconds: float


def build_references(pairs: list[Pair], speakers: set[int], codec, through_codec: bool,
                     postfilters: tuple[str, ...] = ()) -> dict[int, list[Reference]]:
  """Per speaker in `speakers`, one reference per distinct answer text (first pair's audio;
  through the codec and then `postfilters` when `through_codec`)."""
  from telugu_jax.data import audio
  from telugu_jax.inference.postfilter import postfilter

  first: dict[tuple[str, int], Pair] = {}
  for pair in pairs:
    if pair.speaker_id in speakers:
      first.setdefault((pair.identity, pair.speaker_id), pair)
  references = collections.defaultdict(list)
  for (identity, speaker), pair in tqdm(first.items(), desc=f"{pairs[0].split} references",
                                        unit="ref"):
    wave = audio.normalize_rms(audio.pcm16_to_float(pair.answer_pcm))
    if through_codec:
      wave = codec.reconstruct(wave[None])[0]
      if postfilters:
        wave = postfilter(wave, postfilters)
    references[speaker].append(Reference(identity, wave, log_mel(wave),
                                         pair.answer_pcm.size / SAMPLE_RATE))
  return references


# ------------------------------------------------------------------------------------------------
# One pair.


def score_answer(pair: Pair, answer: np.ndarray, timings: dict, candidates: list[Reference],
                 dnsmos: bool) -> dict:
  """The `per_pair.csv` row of `pair`'s generated `answer` (with `Responder` timings)."""
  from telugu_jax.evaluation import quality

  right = next(i for i, c in enumerate(candidates) if c.identity == pair.identity)
  if answer.size:
    features = log_mel(answer)
    distances = np.array([dtw_distance(features, c.features) for c in candidates])
    mcd = mel_cepstral_distortion(candidates[right].wave, answer)
    mos = quality.dnsmos(answer) if dnsmos else dict.fromkeys(DNSMOS, math.nan)
  else:  # ended at once: no candidate is near, nothing to measure
    distances = np.full(len(candidates), math.inf)
    mcd = math.nan
    mos = dict.fromkeys(DNSMOS, math.nan)
  rank = rank_of(distances, right)
  nearest = int(np.argmin(distances))
  reference_seconds = candidates[right].seconds
  return {
      "split": pair.split, "key": pair.key, "speaker_id": pair.speaker_id,
      "emotion_id": pair.emotion_id, "answer_text": pair.identity,
      "predicted_text": candidates[nearest].identity if answer.size else "",
      "correct": rank == 1, "rank": rank, "candidates": len(candidates),
      "dtw_right": float(distances[right]) if answer.size else math.nan,
      "dtw_nearest": float(distances[nearest]) if answer.size else math.nan, "mcd": mcd,
      "frames": timings["frames"], "ended": timings["ended"],
      "answer_seconds": timings["answer_seconds"], "reference_seconds": reference_seconds,
      "duration_ratio": timings["answer_seconds"] / reference_seconds,
      **{f"dnsmos_{k}": mos[k] for k in DNSMOS}, "rtf": timings["rtf"],
  }  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Summary and report.


def _mean(values) -> float | None:
  finite = [float(v) for v in values if math.isfinite(float(v))]
  return float(np.mean(finite)) if finite else None


def _std(values) -> float | None:
  finite = [float(v) for v in values if math.isfinite(float(v))]
  return float(np.std(finite)) if finite else None


def split_summary(rows: list[dict]) -> dict:
  """Accuracy against chance and the means of every per-pair measure of one split."""
  if not rows:
    return {"pairs": 0}
  return {
      "pairs": len(rows),
      "accuracy": float(np.mean([r["correct"] for r in rows])),
      "chance": float(np.mean([1.0 / r["candidates"] for r in rows])),
      "candidates_mean": float(np.mean([r["candidates"] for r in rows])),
      "rank_median": float(np.median([r["rank"] for r in rows])),
      "dtw_right_mean": _mean(r["dtw_right"] for r in rows),
      "dtw_right_std": _std(r["dtw_right"] for r in rows),
      "mcd_mean": _mean(r["mcd"] for r in rows),
      "mcd_std": _std(r["mcd"] for r in rows),
      "ended_fraction": float(np.mean([r["ended"] for r in rows])),
      "duration_ratio_mean": _mean(r["duration_ratio"] for r in rows),
      **{f"dnsmos_{k}_mean": _mean(r[f"dnsmos_{k}"] for r in rows) for k in DNSMOS},
      "rtf_mean": _mean(r["rtf"] for r in rows),
  }  # fmt: skip


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
  return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _pm(mean: float | None, std: float | None) -> str:
  return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


SPLIT_TITLES = {
    "validation_voices": "training texts, held-out question voices",
    "validation": "texts never seen in training",
    "train": "training pairs",
}


def write_report(path: str, summary: dict) -> None:
  s = summary["settings"]
  rated = f"first {s['dnsmos_pairs']} " if s.get("dnsmos_pairs") else ""
  filters = ", ".join(s.get("postfilter", ()))
  reference_kind = ("encoded and decoded by the same codec" if s["references"] == "codec"
                    else "the recorded answer audio (not through the codec)")
  if filters and s["references"] == "codec":
    reference_kind += ", then post-filtered like the answers"
  lines = [
      "# Conversation evaluation: does the S2S model give the right answer?", "",
      f"- codec: `{s['codec']}`; S2S: `{s['s2s']}` ({s['variant']} variant)",
      f"- pairs: `{s['pairs']}`; " + (
          f"beam search, {s['beam_size']} beams" if s.get("beam_size") else
          f"sampling: temperature {s['temperature']:g}, top-k {s['top_k']}, top-p "
          f"{s['top_p']:g}, seed {s['seed']}") + "; answers up to "
      f"{s['max_seconds']:g} s ({s['max_frames']} frames at {s['frame_rate']:g} frames/s)"
      + (f"; answers post-filtered ({filters})" if filters else ""),
      "- candidates: every distinct answer text of the split in the pair's speaker's voice; "
      "the reference of a text and speaker is the answer audio of the split's first pair with "
      f"them, {reference_kind}",
      "- distance: DTW on per-frame normalised log-mel frames (Euclidean, divided by the path "
      "length); the answer is right when the nearest candidate is its own text",
      f"- {summary['elapsed_seconds']:.0f} s wall time", "",
  ]
  for split, result in summary["splits"].items():
    lines += [f"## {split} ({SPLIT_TITLES[split]})", ""]
    if not result["pairs"]:
      lines += ["No pairs.", ""]
      continue
    lines += [
        "| measure | value |", "|---|---:|",
        f"| pairs evaluated | {result['pairs']} |",
        f"| candidates per pair (mean) | {result['candidates_mean']:.1f} |",
        f"| **answer accuracy** ↑ | **{100 * result['accuracy']:.1f}%** "
        f"(chance {100 * result['chance']:.1f}%) |",
        f"| rank of the right answer (median) ↓ | {result['rank_median']:g} |",
        f"| DTW distance to the right answer ↓ | "
        f"{_pm(result['dtw_right_mean'], result['dtw_right_std'])} |",
        f"| MCD to the right answer (dB) ↓ | {_pm(result['mcd_mean'], result['mcd_std'])} |",
        f"| answers that end (end-of-speech in time) ↑ | {100 * result['ended_fraction']:.1f}% |",
        f"| answer / reference duration (mean ratio) | {_fmt(result['duration_ratio_mean'])} |",
        *(f"| DNSMOS {k.upper()} of the {rated}answers ↑ | {_fmt(result[f'dnsmos_{k}_mean'])} |"
          for k in DNSMOS),
        f"| real-time factor (mean) | {_fmt(result['rtf_mean'], 2)} |", "",
    ]
    for sample in (x for x in summary["samples"] if x["split"] == split):
      lines += [f"- `{sample['key']}`: [question]({sample['question']}) · "
                f"[answer]({sample['answer']}) · [reference]({sample['reference']})", "",
                f"  ![answer vs reference]({sample['spectrogram']})", ""]
  if summary["skipped"]:
    lines += ["## Skipped records", "", *(f"- {s}" for s in summary["skipped"]), ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def write_csv(path: str, rows: list[dict]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def write_sample(output: str, index: int, pair: Pair, answer: np.ndarray,
                 reference: np.ndarray, reference_label: str) -> dict[str, str]:
  """Question, answer and reference WAVs and their spectrogram comparison."""
  from telugu_jax.data import audio
  from telugu_jax.evaluation import plots

  stem = f"{pair.split}_{index}"
  files = {"split": pair.split, "key": pair.key,
           "question": f"samples/{stem}_question.wav", "answer": f"samples/{stem}_answer.wav",
           "reference": f"samples/{stem}_reference.wav",
           "spectrogram": f"spectrograms/{stem}.png"}
  for name, wave in (("question", audio.pcm16_to_float(pair.question_pcm)), ("answer", answer),
                     ("reference", reference)):
    soundfile.write(os.path.join(output, files[name]), np.clip(wave, -1.0, 1.0), SAMPLE_RATE,
                    subtype="PCM_16")
  shown = answer if answer.size else np.zeros(HOP, np.float32)
  plots.spectrogram_comparison(reference, shown, os.path.join(output, files["spectrogram"]),
                               SAMPLE_RATE, f"{pair.split}: {pair.key}",
                               labels=(reference_label, "generated answer"))
  return files


# ------------------------------------------------------------------------------------------------
# The run.


def main(argv: list[str] | None = None) -> int:
  from telugu_jax.inference import postfilter as postfilter_lib

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--codec", required=True, help="codec checkpoint or training workdir")
  parser.add_argument("--s2s", required=True, help="S2S checkpoint or training workdir")
  parser.add_argument("--pairs", required=True, help="make_conversations output folder")
  parser.add_argument("--output", required=True, help="report folder")
  parser.add_argument("--split", default="validation_voices,validation",
                      help="comma-separated splits")
  parser.add_argument("--max_pairs", type=int, default=None, help="pairs per split (first N)")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--beam_size", type=int, default=0,
                      help="> 0: the most likely answer by beam search (sampling unused)")
  parser.add_argument("--max_seconds", type=float, default=10.0, help="longest answer")
  parser.add_argument("--references", choices=("codec", "original"), default="codec",
                      help="compare with references through the codec (default) or as recorded")
  parser.add_argument("--num_samples", type=int, default=2,
                      help="pairs per split written as WAVs and spectrograms")
  parser.add_argument("--no_dnsmos", dest="dnsmos", action="store_false",
                      help="skip DNSMOS (about a second per answer on a CPU)")
  parser.add_argument("--dnsmos_pairs", type=int, default=0,
                      help="DNSMOS of the first N answers per split only (0 = all)")
  parser.add_argument("--postfilter", default="", type=postfilter_lib.flag,
                      help="post-filter each decoded answer (and the codec references): pitch, "
                      "formant or pitch,formant (inference.postfilter)")
  args = parser.parse_args(argv)
  splits = [s for s in args.split.split(",") if s]
  if not splits or set(splits) - set(SPLITS):
    parser.error(f"--split takes splits among {SPLITS}, got {args.split!r}")
  if not args.max_seconds > 0 or (args.max_pairs is not None and args.max_pairs < 1):
    parser.error("--max_seconds and --max_pairs must be positive")
  if args.dnsmos_pairs < 0:
    parser.error(f"--dnsmos_pairs must be 0 (all) or positive, got {args.dnsmos_pairs}")
  if args.beam_size < 0:
    parser.error(f"--beam_size must be 0 (sampling) or positive, got {args.beam_size}")

  from telugu_jax.data import audio
  from telugu_jax.inference import Responder, load_codec, load_s2s
  postfilters = tuple(filter(None, args.postfilter.split(",")))

  start = time.time()
  if not os.path.isdir(args.pairs):
    print(f"error: {args.pairs}: no such folder", file=sys.stderr)
    return 1
  pairs, skipped = {}, []
  for split in splits:
    pairs[split], split_skipped = read_pairs(args.pairs, split)
    skipped += split_skipped
  if not any(pairs.values()):
    print(f"error: {args.pairs}: no readable pairs of {', '.join(splits)}", file=sys.stderr)
    return 1
  try:
    codec, s2s = load_codec(args.codec), load_s2s(args.s2s)
  except (OSError, ValueError, RuntimeError) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1
  try:
    responder = Responder(codec, s2s)
  except ValueError as e:
    print(f"error: --codec={args.codec} and --s2s={args.s2s} do not match: {e}", file=sys.stderr)
    return 1
  for folder in ("samples", "spectrograms"):
    os.makedirs(os.path.join(args.output, folder), exist_ok=True)

  reference_label = ("reference (through the codec)" if args.references == "codec"
                     else "reference (recorded)")
  rows, samples, results = [], [], {}
  for split in splits:
    chosen = pairs[split][:args.max_pairs]
    split_rows = []
    if chosen:
      references = build_references(pairs[split], {p.speaker_id for p in chosen}, codec,
                                    args.references == "codec", postfilters)
      for pair in tqdm(chosen, desc=split, unit="pair"):
        try:
          answer, timings = responder.respond(
              audio.pcm16_to_float(pair.question_pcm), pair.speaker_id, pair.emotion_id,
              max_seconds=args.max_seconds, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed, beam_size=args.beam_size,
              postfilter=args.postfilter)
        except ValueError as e:  # QuestionError, or a speaker or emotion the model lacks
          skipped.append(f"{pair.split} {pair.key}: {e}")
          continue
        candidates = references[pair.speaker_id]
        rate = args.dnsmos and (not args.dnsmos_pairs or len(split_rows) < args.dnsmos_pairs)
        row = score_answer(pair, answer, timings, candidates, rate)
        if len(split_rows) < args.num_samples:
          reference = next(c.wave for c in candidates if c.identity == pair.identity)
          samples.append(write_sample(args.output, len(split_rows), pair, answer, reference,
                                      reference_label))
        split_rows.append(row)
    results[split] = split_summary(split_rows)
    rows += split_rows
    if split_rows:
      r = results[split]
      print(f"{split}: {r['pairs']} pairs, answer accuracy {100 * r['accuracy']:.1f}% (chance "
            f"{100 * r['chance']:.1f}%, {r['candidates_mean']:.1f} candidates), "
            f"{100 * r['ended_fraction']:.0f}% ended, MCD {_fmt(r['mcd_mean'], 2)} dB")

  summary = {
      "settings": {
          "codec": args.codec, "s2s": args.s2s, "pairs": args.pairs, "variant": s2s.variant,
          "splits": splits, "max_pairs": args.max_pairs, "references": args.references,
          "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
          "seed": args.seed, "beam_size": args.beam_size, "max_seconds": args.max_seconds,
          "max_frames": responder.max_frames(args.max_seconds),
          "frame_rate": responder.frame_rate, "dnsmos": args.dnsmos,
          "dnsmos_pairs": args.dnsmos_pairs, "postfilter": list(postfilters)},
      "splits": results,
      "samples": samples,
      "skipped": skipped,
      "elapsed_seconds": time.time() - start,
  }  # fmt: skip
  write_csv(os.path.join(args.output, "per_pair.csv"), rows)
  with open(os.path.join(args.output, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
  write_report(os.path.join(args.output, "report.md"), summary)
  print(f"report in {os.path.join(args.output, 'report.md')}")
  for s in skipped:
    print(f"skipped {s}", file=sys.stderr)
  return 0 if rows else 1


if __name__ == "__main__":
  sys.exit(main())
