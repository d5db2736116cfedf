"""Data report for audio shards: hours per source and speaker, durations, levels, clipping.

Works from the per-record metadata of `shards.read_index` (the shard builder's sidecars, so no
audio needs decoding; shards without sidecars are scanned instead). A level may be `None` (how
sidecars store the RMS in dBFS of digital silence) or, in shards built before that, -inf: both
count as silent.
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def _finite(value: float | None) -> bool:
  return value is not None and math.isfinite(value)


def _percentiles(values: Sequence[float | None]) -> dict[str, float]:
  finite = np.asarray([v for v in values if _finite(v)], np.float64)
  if finite.size == 0:
    return {}
  return {f"p{p}": float(np.percentile(finite, p)) for p in _PERCENTILES}


def _hours_by(metas: Sequence[dict[str, Any]], field: str) -> dict[str, dict[str, float]]:
  table: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"hours": 0.0, "records": 0})
  for meta in metas:
    row = table[str(meta.get(field) or "(unknown)")]
    row["hours"] += meta["duration"] / 3600.0
    row["records"] += 1
  return dict(sorted(table.items(), key=lambda kv: (-kv[1]["hours"], kv[0])))


def _levels(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
  rms = [m["rms_dbfs"] for m in metas if "rms_dbfs" in m]
  peaks = [m["peak"] for m in metas if _finite(m.get("peak"))]
  clipped = [m["clipped_fraction"] for m in metas if _finite(m.get("clipped_fraction"))]
  n = max(len(clipped), 1)
  return {
      "rms_dbfs": _percentiles(rms),
      "peak": _percentiles(peaks),
      "silent_records": sum(1 for v in rms if not _finite(v)),
      "records_with_clipping": sum(1 for c in clipped if c > 0),
      "share_with_clipping": sum(1 for c in clipped if c > 0) / n,
      "share_over_0.1pct_clipped": sum(1 for c in clipped if c > 1e-3) / n,
      "records_at_full_scale": sum(1 for p in peaks if p >= 0.999),
  }


def summarize(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Totals, hours per source/speaker/split, duration percentiles and level statistics.

  Args:
    metas: per-record metadata with `duration` and, from the shard builder, `source`,
      `speaker`, `split`, `rms_dbfs` (None or -inf for digital silence), `peak`,
      `clipped_fraction`.

  Returns:
    A JSON-able dict.
  """
  durations = [m["duration"] for m in metas]
  by_source = _hours_by(metas, "source")
  return {
      "records": len(metas),
      "hours": sum(durations) / 3600.0,
      "speakers": len({m.get("speaker", "") for m in metas}),
      "hours_by_source": by_source,
      "hours_by_split": _hours_by(metas, "split"),
      "hours_by_speaker": _hours_by(metas, "speaker"),
      "duration_seconds": {
          **_percentiles(durations),
          "min": min(durations, default=0.0),
          "max": max(durations, default=0.0),
          "mean": float(np.mean(durations)) if durations else 0.0,
      },
      "levels": _levels(metas),
      "levels_by_source": {
          source: _levels([m for m in metas if str(m.get("source") or "(unknown)") == source])
          for source in by_source
      },
  }


def _plot_histograms(metas: Sequence[dict[str, Any]], output_dir: str) -> dict[str, str]:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  paths = {}
  by_source = collections.defaultdict(list)
  for meta in metas:
    by_source[str(meta.get("source") or "(unknown)")].append(meta)

  fig, ax = plt.subplots(figsize=(8, 4.5))
  durations = [m["duration"] for m in metas]
  bins = np.linspace(0, max(durations, default=1.0), 41)
  ax.hist([[m["duration"] for m in group] for group in by_source.values()], bins=bins,
          stacked=True, label=list(by_source))  # fmt: skip
  ax.set_xlabel("duration (s)")
  ax.set_ylabel("records")
  ax.set_title(f"Duration of {len(metas)} records ({sum(durations) / 3600:.2f} h)")
  ax.legend(fontsize="small")
  fig.tight_layout()
  paths["duration_histogram"] = os.path.join(output_dir, "duration_histogram.png")
  fig.savefig(paths["duration_histogram"], dpi=100)
  plt.close(fig)

  rms = [m["rms_dbfs"] for m in metas if _finite(m.get("rms_dbfs"))]
  if rms:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(rms, bins=40)
    ax.axvline(-16.0, color="k", linestyle="--", label="training target (-16 dBFS)")
    ax.set_xlabel("RMS level (dBFS)")
    ax.set_ylabel("records")
    ax.set_title("Recording levels before normalisation")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths["level_histogram"] = os.path.join(output_dir, "level_histogram.png")
    fig.savefig(paths["level_histogram"], dpi=100)
    plt.close(fig)
  return paths


def _row(name: str, entry: dict[str, float], digits: int) -> str:
  return f"| {name} | {entry['hours']:.{digits}f} | {entry['records']} |"


def _markdown(summary: dict[str, Any], images: dict[str, str], top_speakers: int) -> str:
  lines = [
      "# Data report",
      "",
      f"{summary['records']} records, {summary['hours']:.3f} hours, "
      f"{summary['speakers']} speakers.",
      "",
      "## Hours per source",
      "",
      "| source | hours | records |",
      "|---|---:|---:|",
  ]
  lines += [_row(k, v, 3) for k, v in summary["hours_by_source"].items()]
  lines += ["", "## Hours per split", "", "| split | hours | records |", "|---|---:|---:|"]
  lines += [_row(k, v, 3) for k, v in summary["hours_by_split"].items()]
  speakers = list(summary["hours_by_speaker"].items())
  lines += ["", f"## Hours per speaker (top {min(top_speakers, len(speakers))} of {len(speakers)})",
            "", "| speaker | hours | records |", "|---|---:|---:|"]  # fmt: skip
  lines += [_row(k, v, 4) for k, v in speakers[:top_speakers]]
  d = summary["duration_seconds"]
  lines += ["", "## Durations", "",
            f"min {d['min']:.2f} s, median {d.get('p50', 0):.2f} s, mean {d['mean']:.2f} s, "
            f"p95 {d.get('p95', 0):.2f} s, max {d['max']:.2f} s.", ""]  # fmt: skip
  if "duration_histogram" in images:
    lines.append(f"![durations]({os.path.basename(images['duration_histogram'])})")
  lines += ["", "## Levels and clipping (before normalisation)", "",
            "| source | RMS p5 / p50 / p95 (dBFS) | peak p50 / p99 | silent | clipped records "
            "| >0.1% clipped |",
            "|---|---|---|---:|---:|---:|"]  # fmt: skip
  rows = list(summary["levels_by_source"].items()) + [("all", summary["levels"])]
  for name, lv in rows:
    r, p = lv["rms_dbfs"], lv["peak"]
    rms = " / ".join(f"{r.get(q, math.nan):.1f}" for q in ("p5", "p50", "p95"))
    peak = " / ".join(f"{p.get(q, math.nan):.3f}" for q in ("p50", "p99"))
    clipped = f"{lv['records_with_clipping']} ({100 * lv['share_with_clipping']:.1f}%)"
    lines.append(
        f"| {name} | {rms} | {peak} | {lv['silent_records']} | {clipped} | "
        f"{100 * lv['share_over_0.1pct_clipped']:.1f}% |"
    )
  if "level_histogram" in images:
    lines += ["", f"![levels]({os.path.basename(images['level_histogram'])})"]
  lines += ["", "Clipped: samples with |x| >= 0.999 of full scale in the source recording.", ""]
  return "\n".join(lines)


def write_report(
    metas: Sequence[dict[str, Any]], output_dir: str | os.PathLike, *, top_speakers: int = 30
) -> dict[str, str]:
  """Writes `report.md`, `report.json` and the histogram PNGs to `output_dir`.

  Args:
    metas: per-record metadata (see `summarize`).
    output_dir: created if needed.
    top_speakers: speakers listed in the Markdown table (all are in the JSON).

  Returns:
    Paths of the files written, by kind.
  """
  output_dir = os.fspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  summary = summarize(metas)
  images = _plot_histograms(metas, output_dir)
  paths = {"json": os.path.join(output_dir, "report.json"),
           "markdown": os.path.join(output_dir, "report.md"), **images}  # fmt: skip
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(summary, f, ensure_ascii=False, indent=1, allow_nan=False)
  with open(paths["markdown"], "w", encoding="utf-8") as f:
    f.write(_markdown(summary, images, top_speakers))
  return paths
