"""Plots training runs' evaluation metrics against step and against wall time, side by side.

    python tools/plot_learning_curves.py --run=original=runs/codec --run=lowrate=runs/lowrate \\
        --output=docs/codec_learning_curves.png \\
        [--metrics=real/mel_distance,real/pesq,real/stoi,val/perplexity_mean,val/dead_codes_mean]

Each `--run=LABEL=WORKDIR` reads `WORKDIR/metrics.jsonl` (written by every trainer). One row of
panels per metric: against the step on the left, against minutes of wall time on the right,
counted from the run's first logged row (compilation before it is not shown). Rows without the
metric, and null (non-finite) values, are left out. Prints the last value of each metric per run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

METRICS = ("real/mel_distance", "real/pesq", "real/stoi", "val/mel_distance",
           "val/perplexity_mean", "val/dead_codes_mean")


def read_curves(workdir: str, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
  """`{metric: [N, 3] array of (step, minutes since the first row, value)}` of one run."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no metrics.jsonl (is {workdir} a training workdir?)")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  if not rows or "wall_time" not in rows[0]:
    raise ValueError(f"{path}: rows without wall_time (written before the trainers logged it)")
  start = rows[0]["wall_time"]
  curves = {}
  for metric in metrics:
    points = [(row["step"], (row["wall_time"] - start) / 60, row[metric]) for row in rows
              if row.get(metric) is not None]
    curves[metric] = np.array(points, dtype=np.float64).reshape(-1, 3)
  return curves


def plot(runs: dict[str, dict[str, np.ndarray]], metrics: tuple[str, ...], output: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(len(metrics), 2, figsize=(10, 2.4 * len(metrics)), squeeze=False)
  for row, metric in enumerate(metrics):
    for label, curves in runs.items():
      points = curves[metric]
      for column, x in ((0, points[:, 0]), (1, points[:, 1])):
        axes[row, column].plot(x, points[:, 2], marker="o", markersize=3, label=label)
    axes[row, 0].set_ylabel(metric)
    for column in (0, 1):
      axes[row, column].grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  axes[-1, 1].set_xlabel("wall time, minutes")
  axes[0, 0].legend()
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  figure.savefig(output, dpi=100)
  plt.close(figure)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run", action="append", required=True, metavar="LABEL=WORKDIR",
                      help="A training workdir and its label in the legend (repeat).")
  parser.add_argument("--metrics", default=",".join(METRICS),
                      help="Comma-separated metrics.jsonl keys, one row of panels each.")
  parser.add_argument("--output", required=True, help="PNG file to write.")
  args = parser.parse_args(argv)
  metrics = tuple(m for m in args.metrics.split(",") if m)
  runs = {}
  for spec in args.run:
    label, sep, workdir = spec.partition("=")
    if not sep or not label or not workdir:
      parser.error(f"--run={spec}: expected LABEL=WORKDIR")
    try:
      runs[label] = read_curves(workdir, metrics)
    except (OSError, ValueError) as error:
      print(f"error: {error}", file=sys.stderr)
      return 1
  plot(runs, metrics, args.output)
  for label, curves in runs.items():
    last = {m: f"{c[-1, 2]:.4g} (step {c[-1, 0]:.0f}, {c[-1, 1]:.1f} min)" for m, c in
            curves.items() if len(c)}
    print(f"{label}: " + "; ".join(f"{m} {v}" for m, v in last.items()))
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
