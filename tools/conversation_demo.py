r"""The end-to-end conversation demo: spoken Telugu question in, spoken Telugu answer out.

    python tools/conversation_demo.py --workdir=runs/conversation_demo

From a fresh clone on 2 CPU cores (29.9 minutes measured end to end on a 2-core AMD EPYC;
README "The conversation demo"), five stages, each an ordinary command of this project that the
driver prints before running it:

  1. `tools/make_speech_corpus.py`: a small synthetic Telugu speech corpus (espeak-ng + Festival)
     for the codec;
  2. `configs/codec.py:lowrate_demo`: a narrow 50 frames/s codec trained on it;
  3. `tools/make_conversations.py --codec`: question -> answer pairs of a few topics' fixed texts
     (`--topics`), questions in many user voices, answers in one assistant voice, encoded by the
     codec; `validation_voices` holds training texts asked in held-out voices, `validation`
     texts never trained on;
  4. `configs/s2s.py:conversation_demo`: the S2S model trained from scratch on the code pairs;
  5. `tools/evaluate_conversations.py`: every validation question answered, decoded, and matched
     to the nearest candidate answer by DTW on log-mel (answer accuracy against chance); DNSMOS
     of the first 30 answers of each split.

Every stage resumes (its tool does): rerunning after an interruption continues where it stopped.
Needs `apt-get install espeak-ng festival festvox-te-nsk`. The timings of the stages and the
accuracies are printed at the end and written to `WORKDIR/demo_summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOPICS = "greetings,well_being,goodbyes"


def stages(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
  """(name, command) of each stage, in order."""
  w = args.workdir
  python = sys.executable
  return [
      ("speech corpus", [python, "tools/make_speech_corpus.py", f"--output={w}/speech",
                         f"--hours={args.codec_hours}", f"--seed={args.seed}"]),
      ("codec", [python, "-m", "telugu_jax.main", "--config=configs/codec.py:lowrate_demo",
                 f"--workdir={w}/codec", f"--config.num_epochs={args.codec_epochs}",
                 f"--config.seed={args.seed}",
                 f"--config.data.train_shards={w}/speech/train-*.arrayrecord",
                 f"--config.data.validation_shards={w}/speech/validation-*.arrayrecord"]),
      ("pairs", [python, "tools/make_conversations.py", f"--output={w}/pairs",
                 f"--pairs={args.pairs}", f"--seed={args.seed}", f"--topics={args.topics}",
                 "--fixed_only", "--speakers=male_young", "--emotions=neutral",
                 f"--validation_voices_fraction={args.validation_voices_fraction}",
                 "--augment=0", f"--workers={os.cpu_count() or 1}", f"--codec={w}/codec"]),
      ("s2s", [python, "-m", "telugu_jax.main", "--config=configs/s2s.py:conversation_demo",
               f"--workdir={w}/s2s", f"--config.total_steps={args.s2s_steps}",
               f"--config.seed={args.seed}", f"--config.codec_checkpoint={w}/codec",
               f"--config.data.train_shards={w}/pairs/codes/train-*.arrayrecord",
               f"--config.data.validation_shards={w}/pairs/codes/validation_voices-*.arrayrecord"]),
      ("evaluation", [python, "tools/evaluate_conversations.py", f"--codec={w}/codec",
                      f"--s2s={w}/s2s", f"--pairs={w}/pairs", f"--output={w}/report",
                      "--split=validation_voices,validation", f"--max_pairs={args.eval_pairs}",
                      "--num_samples=4", "--dnsmos_pairs=30"]),
  ]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/conversation_demo", help="everything goes here")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--codec_hours", type=float, default=0.25,
                      help="hours of synthetic speech for the codec")
  parser.add_argument("--codec_epochs", type=int, default=15, help="codec training epochs")
  parser.add_argument("--pairs", type=int, default=3000, help="question -> answer pairs")
  parser.add_argument("--topics", default=DEFAULT_TOPICS, help="topics of the text set")
  parser.add_argument("--validation_voices_fraction", type=float, default=0.06,
                      help="share of training-text pairs asked in held-out voices")
  parser.add_argument("--s2s_steps", type=int, default=2500, help="S2S training steps")
  parser.add_argument("--eval_pairs", type=int, default=150,
                      help="questions evaluated per split (the first N)")
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)

  timings = {}
  start = time.time()
  for name, command in stages(args):
    print(f"\n=== {name}: {shlex.join(command)}", flush=True)
    began = time.time()
    result = subprocess.run(command, cwd=REPO, check=False)
    timings[name] = round(time.time() - began, 1)
    if result.returncode != 0:
      print(f"error: the {name} stage failed (exit code {result.returncode}); rerun to resume",
            file=sys.stderr)
      return result.returncode
  total = time.time() - start

  with open(os.path.join(args.workdir, "report", "summary.json"), encoding="utf-8") as f:
    report = json.load(f)
  summary = {"settings": vars(args), "stage_seconds": timings, "total_seconds": round(total, 1),
             "splits": report["splits"]}
  with open(os.path.join(args.workdir, "demo_summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
  print("\n=== conversation demo: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
        + f"; total {total / 60:.1f} min")
  for split, r in report["splits"].items():
    if r.get("pairs"):
      print(f"{split}: answer accuracy {100 * r['accuracy']:.1f}% over {r['pairs']} questions "
            f"(chance {100 * r['chance']:.1f}%)")
  print(f"report: {os.path.join(args.workdir, 'report', 'report.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
