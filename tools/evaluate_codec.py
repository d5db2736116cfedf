"""Evaluates a codec on held-out speech with the standard quality metrics, offline.

    python tools/evaluate_codec.py --checkpoint=DIR --clips=../shared/data/common-voice-te-dev \\
        --output=report/ [--levels=K] [--max_clips=N] [--metrics=pesq,stoi,visqol,dnsmos] \\
        [--postfilter=pitch,formant]

`--checkpoint` is a converted checkpoint or a training workdir. `--clips` is a folder (searched
recursively for audio files of any supported format and for audio ArrayRecord shards), a
single file, or a glob of files (`'/data/shards/te/validation-*.arrayrecord'`). Each clip is
folded to mono, resampled to 16 kHz and level-normalised as in training (`normalize_rms`), then
encoded, decoded (with only the first K quantizer levels under `--levels=K`: a lower bitrate)
and scored against the normalised input with `telugu_jax.evaluation.quality` (PESQ wide-band,
STOI, ESTOI, ViSQOL speech, DNSMOS, SI-SDR, SNR, multi-scale mel distance). `--postfilter`
scores the decoded audio after the named post-filters of `inference.postfilter` (`pitch`,
`formant` or both; the pitch one runs first).

Writes to `--output`:

* `per_clip.csv`: one row per clip, one column per metric;
* `summary.json`: the codec, bitrate, per-metric statistics, codebook usage per level, skipped
  clips and timing;
* `report.md`: the tables and figures (`metrics.png`, `codebook_usage.png`,
  `spectrograms/*.png`) and links to listening samples (`samples/*_original.wav`, the normalised
  input, and `samples/*_reconstruction.wav`) for the first `--num_samples` clips.

Unreadable or corrupt clips are skipped and listed (the run goes on); the exit code is 1 when no
clip could be evaluated.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable

import numpy as np
import soundfile
from tqdm import tqdm

LABELS = {
    "pesq": "PESQ wide-band",
    "stoi": "STOI",
    "estoi": "ESTOI",
    "visqol": "ViSQOL speech (MOS-LQO)",
    "dnsmos_ovrl": "DNSMOS overall",
    "dnsmos_sig": "DNSMOS speech (SIG)",
    "dnsmos_bak": "DNSMOS background (BAK)",
    "dnsmos_p808": "DNSMOS P.808",
    "input_dnsmos_ovrl": "DNSMOS overall of the input",
    "si_sdr": "SI-SDR (dB)",
    "snr": "SNR (dB)",
    "mel_distance": "multi-scale mel distance",
}

Clip = tuple[str, Callable[[], np.ndarray]]


def _audio_clip(path: str, name: str) -> Clip:
  from telugu_jax.data import audio

  return name, lambda: audio.load_audio(path, audio.SAMPLE_RATE, name=name)


def _shard_clips(path: str) -> tuple[list[Clip], list[dict[str, str]]]:
  """One clip per record of an audio shard, or the shard as skipped if its index is unreadable."""
  import grain

  name = os.path.basename(path)
  try:
    source = grain.sources.ArrayRecordDataSource([path])
    count = len(source)
  except Exception as e:  # The reader's error types are not part of its API.
    return [], [{"clip": name, "error": f"{name}: unreadable shard ({type(e).__name__}: {e})"}]

  def load(index: int) -> np.ndarray:
    from telugu_jax.data import audio, records

    location = f"{name}#{index}"
    try:
      data = source[index]
    except Exception as e:  # As above.
      raise ValueError(f"{location}: unreadable record ({type(e).__name__}: {e})") from e
    try:
      arrays, _ = records.decode_record(data)
    except records.CorruptRecordError as e:
      raise ValueError(f"{location}: {e}") from e
    pcm = arrays.get("pcm")
    if pcm is None or pcm.ndim != 1 or pcm.dtype != np.int16:
      raise ValueError(f"{location}: not an audio record (no int16 'pcm' [T] array)")
    return audio.pcm16_to_float(pcm)

  return [(f"{name}#{i}", lambda i=i: load(i)) for i in range(count)], []


def find_clips(spec: str) -> tuple[list[Clip], list[dict[str, str]]]:
  """Clips named by a folder, a file or a glob: `([(name, load)], [unreadable shards])`.

  `load()` returns the clip's mono float32 wave at 16 kHz (not normalised) or raises
  `ValueError` (`AudioDecodeError` included) naming the clip.
  """
  from telugu_jax.data.audio import AUDIO_EXTENSIONS
  from telugu_jax.data.records import SHARD_SUFFIX

  if os.path.isdir(spec):
    root = spec
    paths = [os.path.join(folder, f) for folder, _, files in os.walk(spec) for f in files]
  else:
    paths = glob.glob(spec, recursive=True)
    # Clips are named by their path below the deepest folder that holds them all.
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths] or ["."])
  clips, skipped = [], []
  for path in sorted(paths):
    if path.endswith(SHARD_SUFFIX):
      shard_clips, shard_skipped = _shard_clips(path)
      clips += shard_clips
      skipped += shard_skipped
    elif path.lower().endswith(AUDIO_EXTENSIONS):
      name = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
      clips.append(_audio_clip(path, name.replace(os.sep, "/")))
  return clips, skipped


def frame_rate(codec) -> float:
  """Code frames per second: the sample rate over the encoder's total stride (original: 200 Hz;
  `configs/codec.py:lowrate`: 50 Hz)."""
  return codec.sample_rate / math.prod(codec.model.strides)


def bitrate(codec, levels: int) -> float:
  """Bits per second of `levels` quantizer levels: levels × log2(codebook) × frames per second."""
  return levels * math.log2(codec.codebook_size) * frame_rate(codec)


def statistics(values: list[float]) -> dict[str, float | int | None]:
  """Mean, std, median, min and max over the finite values, and their count (None when none)."""
  finite = np.asarray([v for v in values if math.isfinite(v)], np.float64)
  if not finite.size:
    return {"mean": None, "std": None, "median": None, "min": None, "max": None, "count": 0}
  return {"mean": float(finite.mean()), "std": float(finite.std()),
          "median": float(np.median(finite)), "min": float(finite.min()),
          "max": float(finite.max()), "count": int(finite.size)}


def _file_stem(name: str) -> str:
  return re.sub(r"[^\w.-]+", "_", os.path.splitext(name)[0]).strip("_") or "clip"


def _write_csv(path: str, rows: list[dict[str, float | str]], columns: list[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["clip", "seconds", *columns])
    for row in rows:
      writer.writerow([row["clip"], f"{row['seconds']:.3f}",
                       *(f"{row[c]:.6g}" for c in columns)])


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _plot_metrics(path: str, rows: list[dict[str, float | str]], columns: list[str]) -> None:
  """One panel per metric: a bar per clip (up to 40 clips), else a histogram."""
  plt = _pyplot()

  width = 3
  height = math.ceil(len(columns) / width)
  fig, axes = plt.subplots(height, width, figsize=(5 * width, 3 * height), squeeze=False,
                           constrained_layout=True)
  for ax, column in zip(axes.flat, columns):
    values = np.asarray([row[column] for row in rows], np.float64)
    if len(rows) <= 40:
      ax.bar(np.arange(len(rows)), np.nan_to_num(values, nan=0.0), color="tab:blue")
      ax.set_xticks(np.arange(len(rows)), [str(i) for i in range(len(rows))], fontsize=7)
      ax.set_xlabel("clip (row of per_clip.csv)")
    else:
      ax.hist(values[np.isfinite(values)], bins=30, color="tab:blue")
      ax.set_xlabel("value")
    ax.set_title(LABELS[column], fontsize=10)
  for ax in list(axes.flat)[len(columns):]:
    ax.axis("off")
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _plot_codebook_usage(path: str, usage: dict[str, np.ndarray], codebook_size: int,
                         levels: int) -> None:
  """Perplexity and dead codes per quantizer level; levels left out of decoding are grey."""
  plt = _pyplot()

  num_levels = len(usage["perplexity"])
  colors = ["tab:blue" if q < levels else "tab:gray" for q in range(num_levels)]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
  left.bar(np.arange(num_levels), usage["perplexity"], color=colors)
  left.axhline(codebook_size, color="k", linestyle="--", linewidth=1, label="codebook size")
  left.set_title("perplexity (codes in effective use)")
  left.legend(fontsize=8)
  right.bar(np.arange(num_levels), usage["dead"], color=colors)
  right.yaxis.get_major_locator().set_params(integer=True)
  right.set_title("dead codes (never used)")
  for ax in (left, right):
    ax.set_xlabel("quantizer level")
    ax.set_xticks(np.arange(num_levels))
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _format(value: float | None, digits: int = 3) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def _write_report(path: str, summary: dict, columns: list[str]) -> None:
  codec = summary["codec"]
  lines = [
      "# Codec evaluation", "",
      f"- checkpoint: `{summary['checkpoint']}`",
      f"- clips: `{summary['clips']}`: {summary['num_clips']} evaluated "
      f"({summary['audio_seconds']:.1f} s of audio), {len(summary['skipped'])} skipped",
      f"- codec: {codec['num_quantizers']} levels × {codec['codebook_size']} codes at "
      f"{codec['frame_rate']:g} frames/s; decoded with **{summary['levels']} levels = "
      f"{summary['bitrate_bps'] / 1000:.2f} kbps**"
      + (f", then the post-filters: {', '.join(summary['postfilter'])}"
         if summary["postfilter"] else ""),
      f"- input level-normalised as in training (RMS {summary['target_rms']}); "
      f"{summary['elapsed_seconds']:.0f} s wall time", "",
      "| metric | mean ± std | median | min | max | clips |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for column in columns:
    s = summary["metrics"][column]
    arrow = "↓" if column in summary["lower_is_better"] else "↑"
    mean_std = "n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
    lines.append(f"| {LABELS[column]} {arrow} | {mean_std} | {_format(s['median'])} | "
                 f"{_format(s['min'])} | {_format(s['max'])} | {s['count']} |")
  if summary["num_clips"]:
    lines += ["", "![per-clip metrics](metrics.png)"]
  lines += ["", "## Codebook usage", "",
            "Over all evaluated frames; levels past `--levels` are encoded but not decoded.", "",
            "| level | perplexity | dead codes | used |", "|---:|---:|---:|---:|"]
  usage = summary["codebook_usage"]
  for q, (perplexity, dead, used) in enumerate(zip(usage["perplexity"], usage["dead"],
                                                   usage["usage"])):
    mark = "" if q < summary["levels"] else " (not decoded)"
    lines.append(f"| {q}{mark} | {perplexity:.1f} | {dead} | {100 * used:.1f}% |")
  lines.append("")
  if summary["num_clips"]:
    lines += ["![codebook usage](codebook_usage.png)", ""]
  if summary["samples"]:
    lines += ["## Listening samples", ""]
    for sample in summary["samples"]:
      lines += [f"### {sample['clip']}", "",
                f"[original]({sample['original']}) · "
                f"[reconstruction]({sample['reconstruction']})", "",
                f"![spectrograms of {sample['clip']}]({sample['spectrogram']})", ""]
  if summary["skipped"]:
    lines += ["## Skipped clips", ""]
    lines += [f"- {s['error']}" for s in summary["skipped"]]
    lines.append("")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def _listening_sample(output: str, name: str, original: np.ndarray,
                      reconstruction: np.ndarray, sample_rate: int) -> dict[str, str]:
  from telugu_jax.evaluation import plots

  stem = _file_stem(name)
  files = {"clip": name, "original": f"samples/{stem}_original.wav",
           "reconstruction": f"samples/{stem}_reconstruction.wav",
           "spectrogram": f"spectrograms/{stem}.png"}
  for key, wave in (("original", original), ("reconstruction", reconstruction)):
    soundfile.write(os.path.join(output, files[key]), np.clip(wave, -1.0, 1.0), sample_rate,
                    subtype="PCM_16")
  plots.spectrogram_comparison(original, reconstruction,
                               os.path.join(output, files["spectrogram"]), sample_rate, name)
  return files


def main(argv: list[str] | None = None) -> int:
  from telugu_jax.inference import postfilter as postfilter_lib

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True,
                      help="a converted checkpoint or a training workdir")
  parser.add_argument("--clips", required=True, help="audio/shard folder, file or glob")
  parser.add_argument("--output", required=True, help="report folder")
  parser.add_argument("--levels", type=int, default=None,
                      help="decode with only the first K quantizer levels (default: all)")
  parser.add_argument("--max_clips", type=int, default=None,
                      help="stop after this many evaluated clips")
  parser.add_argument("--metrics", default="pesq,stoi,visqol,dnsmos",
                      help="optional metric groups (SI-SDR, SNR, mel distance are always on)")
  parser.add_argument("--num_samples", type=int, default=3,
                      help="clips with listening samples and spectrograms")
  parser.add_argument("--postfilter", default="", type=postfilter_lib.flag,
                      help="post-filter the decoded audio before scoring: pitch, formant or "
                      "pitch,formant (inference.postfilter)")
  args = parser.parse_args(argv)

  from telugu_jax.data import audio
  from telugu_jax.evaluation import metrics as eval_metrics
  from telugu_jax.evaluation import quality
  from telugu_jax.inference import load_codec
  postfilters = tuple(filter(None, args.postfilter.split(",")))
  groups = [g for g in args.metrics.split(",") if g]
  try:
    columns = quality.columns(groups)
  except ValueError as e:
    parser.error(str(e))
  start = time.time()
  clips, skipped = find_clips(args.clips)
  if not clips:
    print(f"error: no audio files or shards under {args.clips}", file=sys.stderr)
    return 1
  codec = load_codec(args.checkpoint)
  levels = codec.num_quantizers if args.levels is None else args.levels
  if not 1 <= levels <= codec.num_quantizers:
    print(f"error: --levels must lie in [1, {codec.num_quantizers}]", file=sys.stderr)
    return 1
  for folder in ("samples", "spectrograms"):
    os.makedirs(os.path.join(args.output, folder), exist_ok=True)

  rows, samples = [], []
  counts = np.zeros((codec.num_quantizers, codec.codebook_size), np.int64)
  total = len(clips) if args.max_clips is None else min(len(clips), args.max_clips)
  progress = tqdm(total=total, desc="evaluate", unit="clip")
  for name, load in clips:
    if len(rows) == total:
      break
    try:
      wave = audio.normalize_rms(load())
      if codec.num_frames(wave.size) < 1:
        raise ValueError(f"{name}: {wave.size} samples, shorter than one codec frame")
    except (ValueError, OSError) as e:  # AudioDecodeError is a ValueError.
      skipped.append({"clip": name, "error": str(e)})
      progress.set_postfix(skipped=len(skipped))
      continue
    codes = codec.encode(wave[None])
    counts += np.stack([np.bincount(level, minlength=codec.codebook_size)
                        for level in codes[0]])
    recon = codec.decode(codes, levels=levels)[0, : wave.size]
    recon = np.pad(recon, (0, wave.size - recon.size))
    if postfilters:
      recon = postfilter_lib.postfilter(recon, postfilters)
    rows.append({"clip": name, "seconds": wave.size / codec.sample_rate,
                 **quality.clip_quality(wave, recon, codec.sample_rate, groups)})
    if len(samples) < args.num_samples:
      samples.append(_listening_sample(args.output, name, wave, recon, codec.sample_rate))
    progress.update()
  progress.close()

  usage = eval_metrics.codebook_usage(counts)
  summary = {
      "checkpoint": args.checkpoint,
      "clips": args.clips,
      "num_clips": len(rows),
      "audio_seconds": float(sum(row["seconds"] for row in rows)),
      "target_rms": audio.TARGET_RMS,
      "levels": levels,
      "postfilter": list(postfilters),
      "bitrate_bps": bitrate(codec, levels),
      "codec": {**codec.codec_kwargs, "num_quantizers": codec.num_quantizers,
                "codebook_size": codec.codebook_size, "frame_rate": frame_rate(codec),
                "config_hash": codec.config_hash},
      "metrics": {c: statistics([row[c] for row in rows]) for c in columns},
      "lower_is_better": sorted(quality.LOWER_IS_BETTER & set(columns)),
      "codebook_usage": {k: v.tolist() for k, v in usage.items()},
      "samples": samples,
      "skipped": skipped,
      "elapsed_seconds": time.time() - start,
  }
  _write_csv(os.path.join(args.output, "per_clip.csv"), rows, columns)
  with open(os.path.join(args.output, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
  if rows:
    _plot_metrics(os.path.join(args.output, "metrics.png"), rows, columns)
    _plot_codebook_usage(os.path.join(args.output, "codebook_usage.png"), usage,
                         codec.codebook_size, levels)
  _write_report(os.path.join(args.output, "report.md"), summary, columns)
  print(f"evaluated {len(rows)} clips ({summary['audio_seconds']:.1f} s of audio), skipped "
        f"{len(skipped)}; report in {os.path.join(args.output, 'report.md')}")
  for s in skipped:
    print(f"skipped {s['error']}", file=sys.stderr)
  return 0 if rows else 1


if __name__ == "__main__":
  sys.exit(main())
