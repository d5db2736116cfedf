r"""Makes a synthetic Telugu speech corpus for codec training: audio ArrayRecord shards, offline.

  python tools/make_speech_corpus.py --output=$HOME/.cache/telugu_jax/speech_corpus --hours=2
  python -m telugu_jax.main --config=configs/codec.py:lowrate --workdir=/tmp/codec_lowrate \
      --config.data.train_shards="$HOME/.cache/telugu_jax/speech_corpus/train-*.arrayrecord" \
      --config.data.validation_shards="$HOME/.cache/telugu_jax/speech_corpus/validation-*.arrayrecord"

Sentences are the questions and answers of the bundled conversation text set
(`telugu_jax/data/conversations.py`: 16 topics, slots filled with names, places, numbers, dates);
they are spoken by espeak-ng's Telugu voice variants (`te+m1..m7`, `te+f1..f5`) and Festival's
Telugu diphone voice `festvox-te-nsk` (real speaker diphones), each utterance with its own pitch,
pitch range and speed drawn around one of the project's voices. Augmentations, each drawn per
utterance: speed perturbation (resampling: tempo and pitch together), a peaking or band-limiting
EQ, synthetic room reverb, white or pink noise, and a random level (gain); with `--room_tone=P`,
leading and trailing pauses over a quiet noise floor (see `ROOM_TONE`). Utterances whose
text template is held out (`TextSet.split_of`) go to `validation-*` shards, the rest to
`train-*`: validation sentences are never trained on.

Everything about utterance `i` depends on `(--seed, i)` only. Shard `s` holds utterances
`[s * N, (s + 1) * N)` (N = `--shard_utterances`); shards are made in order until the training
split holds `--hours` of audio. Rerunning resumes: a shard whose sidecar (`shard-SSSSS.json`)
matches the run is kept, a larger `--hours` adds shards, a smaller one drops the surplus.
Shards are written atomically. `summary.json` and the printed summary give hours per split,
voices, engines and augmentations. Needs `espeak-ng`, `festival` and `festvox-te-nsk`
(`apt-get install espeak-ng festival festvox-te-nsk`). The corpus is a cache: do not commit it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.signal
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telugu_jax.data import audio  # noqa: E402
from telugu_jax.data import conversations  # noqa: E402
from telugu_jax.data import records  # noqa: E402

FORMAT = "telugu_jax.speech_corpus/1"
SUMMARY_NAME = "summary.json"
SOURCE = "synthetic-speech"
SPLITS = ("train", "validation")
VOICES = conversations.USER_VOICES + tuple(conversations.ASSISTANT_VOICES.values())
"""Base voices: 24 espeak-ng and 8 Festival user voices, and the 4 assistant voices."""


@dataclasses.dataclass(frozen=True)
class UtterancePlan:
  """Everything needed to render one utterance, deterministically."""

  key: str
  index: int
  split: str
  text: str
  template_id: str
  voice: conversations.Voice  # base voice with jittered pitch, range and speed
  speed: float  # resampling factor (1.0: none)
  rms_dbfs: float  # final level
  augment: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (kind, params), in order
  render_seed: int
  room_tone: tuple[tuple[str, Any], ...] = ()  # pauses and noise floor; () for none


ROOM_TONE = dict(pause_s=(0.1, 0.8), below_db=(40.0, 70.0))
"""`--room_tone`: each pause (before and after the speech) lasts `pause_s` seconds, and a white
or pink noise floor `below_db` dB under the speech's RMS runs through the whole utterance. The
synthesised speech is otherwise trimmed to 50 ms of digital silence, while real recordings open
and close on room tone (the 15 Common Voice clips, scaled to −16 dBFS RMS as in training: 48% of
their 20 ms frames under −50 dBFS, 30% under −65 dBFS; the corpus without room tone: 6% under
−50 dBFS)."""


def plan_utterance(text_set: conversations.TextSet, seed: int, index: int,
                   augment_prob: float = 0.7, room_tone_prob: float = 0.0) -> UtterancePlan:
  """Plans utterance `index` of the run with `seed` (independent of hours and shard size); the
  room tone is drawn last, so that `room_tone_prob` changes nothing else of the plan."""
  rng = np.random.default_rng([seed, index, 7])
  pair = text_set.sample(rng)
  text = pair.question if rng.random() < 0.5 else pair.answer
  engine = "festival" if rng.random() < 0.35 else "espeak"
  pool = [v for v in VOICES if v.engine == engine]
  voice = pool[int(rng.integers(len(pool)))].scaled(
      rate=float(rng.uniform(0.8, 1.25)), pitch=float(rng.uniform(0.85, 1.2)),
      pitch_range=float(rng.uniform(0.6, 1.6)))
  # Every parameter is always drawn, so the flags never shift later draws.
  on = rng.random(4) < np.array([0.3, 0.4, 0.3, 0.35])  # speed, EQ, reverb, noise
  apply = rng.random() < augment_prob
  speed = round(float(rng.uniform(0.9, 1.1)), 3)
  eq = (("kind", "band"), ("low_hz", 300.0), ("high_hz", 3400.0)) if rng.random() < 0.3 else (
      ("kind", "peak"), ("center_hz", round(float(np.exp(rng.uniform(np.log(150), np.log(5000)))), 1)),
      ("gain_db", round(float(rng.choice([-1, 1]) * rng.uniform(3.0, 10.0)), 2)))
  reverb = (("rt60_s", round(float(rng.uniform(0.15, 0.9)), 3)),
            ("wet", round(float(rng.uniform(0.15, 0.5)), 3)))
  noise = (("color", ("white", "pink")[int(rng.integers(2))]),
           ("snr_db", round(float(rng.uniform(8.0, 35.0)), 2)))
  rms_dbfs = round(float(rng.uniform(-32.0, -14.0)), 2)
  augment = tuple((name, params) for name, params, flag in
                  zip(("eq", "reverb", "noise"), (eq, reverb, noise), on[1:4]) if apply and flag)
  render_seed = int(rng.integers(2**31))
  tone_on = rng.random() < room_tone_prob
  tone = (("lead_s", round(float(rng.uniform(*ROOM_TONE["pause_s"])), 3)),
          ("trail_s", round(float(rng.uniform(*ROOM_TONE["pause_s"])), 3)),
          ("below_db", round(float(rng.uniform(*ROOM_TONE["below_db"])), 2)),
          ("color", ("white", "pink")[int(rng.integers(2))]))
  return UtterancePlan(
      key=f"u{seed}-{index:08d}", index=index, split=text_set.split_of(pair.template_id),
      text=text, template_id=pair.template_id, voice=voice,
      speed=speed if apply and on[0] else 1.0, rms_dbfs=rms_dbfs, augment=augment,
      render_seed=render_seed, room_tone=tone if tone_on else ())


def peaking_eq(wave: np.ndarray, center_hz: float, gain_db: float, q: float = 1.0) -> np.ndarray:
  """A peaking EQ (RBJ biquad): `gain_db` of boost or cut around `center_hz`."""
  a = 10 ** (gain_db / 40)
  w0 = 2 * math.pi * center_hz / audio.SAMPLE_RATE
  alpha = math.sin(w0) / (2 * q)
  b = [1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a]
  den = [1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a]
  return scipy.signal.lfilter(b, den, wave).astype(np.float32)


def finish(wave: np.ndarray, plan: UtterancePlan) -> np.ndarray:
  """Trims, speed-perturbs, augments and levels one synthesised utterance (float32 16 kHz)."""
  rng = np.random.default_rng(plan.render_seed)
  wave = conversations.trim_silence(wave)
  if plan.speed != 1.0:  # Played `speed` times faster: read as if recorded at a higher rate.
    wave = audio.resample(wave, round(audio.SAMPLE_RATE * plan.speed), audio.SAMPLE_RATE)
  wave = conversations.set_level(wave, conversations.REFERENCE_DBFS)
  for name, params in plan.augment:
    p = dict(params)
    if name == "eq" and p["kind"] == "peak":
      wave = peaking_eq(wave, p["center_hz"], p["gain_db"])
    elif name == "eq":
      wave = conversations.band_limit(wave, p["low_hz"], p["high_hz"])
    elif name == "reverb":
      wave = conversations.add_reverb(wave, p["rt60_s"], p["wet"], rng)
    else:
      wave = conversations.add_noise(wave, p["snr_db"], p["color"], rng)
  wave = conversations.set_level(wave, plan.rms_dbfs)
  if plan.room_tone:
    wave = add_room_tone(wave, **dict(plan.room_tone), rng=rng)
  return wave


def add_room_tone(wave: np.ndarray, lead_s: float, trail_s: float, below_db: float, color: str,
                  rng: np.random.Generator) -> np.ndarray:
  """Pads `wave` with `lead_s` and `trail_s` seconds of pause and lays a noise floor
  `below_db` dB under its RMS over all of it."""
  floor_rms = conversations.rms(wave) * 10 ** (-below_db / 20)
  padded = np.pad(wave, (round(lead_s * audio.SAMPLE_RATE), round(trail_s * audio.SAMPLE_RATE)))
  noise = conversations.colored_noise(len(padded), color, rng)
  noise *= floor_rms / (conversations.rms(noise) + 1e-12)
  return np.clip(padded + noise, -1.0, 1.0).astype(np.float32)


def _fingerprint(seed: int, shard: int, shard_utterances: int, augment_prob: float,
                 text_version: str, room_tone_prob: float = 0.0) -> str:
  spec = [FORMAT, seed, shard, shard_utterances, augment_prob, text_version]
  if room_tone_prob:  # Corpora made before the option keep their fingerprints.
    spec.append(room_tone_prob)
  spec = json.dumps(spec)
  return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _shard_paths(output: str, shard: int) -> dict[str, str]:
  paths = {split: os.path.join(output, f"{split}-{shard:05d}{records.SHARD_SUFFIX}")
           for split in SPLITS}
  paths["sidecar"] = os.path.join(output, f"shard-{shard:05d}.json")
  return paths


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, obj: Any) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1)
  os.replace(path + ".tmp", path)


def build_shard(plans: Sequence[UtterancePlan], paths: dict[str, str], fingerprint: str,
                on_seconds=None) -> dict[str, Any]:
  """Synthesises `plans` and writes their split shards and the sidecar; returns the sidecar."""
  with_text = [(plan.text, plan.voice) for plan in plans]
  waves = conversations.synthesize(with_text)
  rows, failed = {split: [] for split in SPLITS}, []
  for plan, wave in zip(plans, waves):
    if isinstance(wave, Exception):
      failed.append({"key": plan.key, "reason": str(wave)})
      continue
    wave = finish(wave, plan)
    meta = {
        "kind": "audio", "key": plan.key, "source": SOURCE, "speaker": plan.voice.name,
        "emotion": "neutral", "transcript": plan.text, "split": plan.split,
        "sample_rate": audio.SAMPLE_RATE, "duration": wave.size / audio.SAMPLE_RATE,
        "segment": 0, "num_segments": 1, "problems": [], "engine": plan.voice.engine,
        "voice": dataclasses.asdict(plan.voice),
        "augment": ([f"speed:{plan.speed:.2f}"] if plan.speed != 1.0 else [])
                   + conversations.augment_labels(plan.augment)
                   + ([f"room_tone:{dict(plan.room_tone)['below_db']:.0f}dB"]
                      if plan.room_tone else []),
        **{k: (float(v) if math.isfinite(v) else None)
           for k, v in audio.level_stats(wave).items()},
    }
    rows[plan.split].append((audio.float_to_pcm16(wave), meta))
    if on_seconds is not None and plan.split == "train":
      on_seconds(meta["duration"])
  for split in SPLITS:
    if rows[split]:
      with records.ShardWriter(paths[split]) as writer:
        for pcm, meta in rows[split]:
          writer.write(records.encode_record({"pcm": pcm}, meta))
    elif os.path.exists(paths[split]):
      os.remove(paths[split])
  sidecar = {"format": FORMAT, "fingerprint": fingerprint, "failed": failed,
             "records": {split: [meta for _, meta in rows[split]] for split in SPLITS},
             "seconds": {split: sum(m["duration"] for _, m in rows[split]) for split in SPLITS}}
  _write_json(paths["sidecar"], sidecar)
  return sidecar


def make_speech_corpus(output: str, hours: float, *, seed: int = 0, shard_utterances: int = 128,
                       augment_prob: float = 0.7, room_tone_prob: float = 0.0,
                       progress: bool = True) -> dict[str, Any]:
  """Makes (or resumes) the corpus in `output`; see the module docstring. Returns the summary.

  Raises:
    ValueError: a non-positive `hours` or `shard_utterances`, or `augment_prob` or
      `room_tone_prob` outside [0, 1].
    conversations.SynthesisError: espeak-ng or Festival's Telugu voice is missing.
  """
  if not hours > 0:
    raise ValueError(f"--hours must be positive, got {hours}")
  if shard_utterances <= 0:
    raise ValueError(f"--shard_utterances must be positive, got {shard_utterances}")
  if not 0.0 <= augment_prob <= 1.0:
    raise ValueError(f"--augment must lie in [0, 1], got {augment_prob}")
  if not 0.0 <= room_tone_prob <= 1.0:
    raise ValueError(f"--room_tone must lie in [0, 1], got {room_tone_prob}")
  conversations.check_engines()
  started = time.time()
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  text_set = conversations.TextSet.load()
  target = hours * 3600.0
  bar = tqdm.tqdm(total=round(target), desc="training audio", unit="s", disable=not progress)
  sidecars, built, train_seconds, shard = [], 0, 0.0, 0
  while train_seconds < target:
    paths = _shard_paths(output, shard)
    fingerprint = _fingerprint(seed, shard, shard_utterances, augment_prob, text_set.version,
                               room_tone_prob)
    sidecar = _read_json(paths["sidecar"])
    done = (sidecar is not None and sidecar.get("fingerprint") == fingerprint and all(
        os.path.isfile(paths[s]) == bool(sidecar["records"][s]) for s in SPLITS))
    if done:
      bar.update(round(sidecar["seconds"]["train"]))
    else:
      plans = [plan_utterance(text_set, seed, i, augment_prob, room_tone_prob)
               for i in range(shard * shard_utterances, (shard + 1) * shard_utterances)]
      sidecar = build_shard(plans, paths, fingerprint, lambda s: bar.update(round(s)))
      built += 1
      if not any(sidecar["records"][s] for s in SPLITS):
        raise conversations.SynthesisError(
            f"{paths['sidecar']}: every utterance of shard {shard} failed; the first: "
            f"{sidecar['failed'][0]['reason']}")
    sidecars.append(sidecar)
    train_seconds += sidecar["seconds"]["train"]
    shard += 1
  bar.close()
  removed = _remove_surplus(output, shard)
  summary = _summarize(sidecars)
  summary.update(output=output, seed=seed, hours_requested=hours, shards=shard,
                 shards_built=built, shards_reused=shard - built, surplus_removed=removed,
                 shard_utterances=shard_utterances, augment_prob=augment_prob,
                 room_tone_prob=room_tone_prob,
                 text_version=text_set.version, seconds=round(time.time() - started, 1))
  _write_json(os.path.join(output, SUMMARY_NAME), summary)
  return summary


def _remove_surplus(output: str, num_shards: int) -> list[str]:
  """Deletes shards (and temporaries) numbered `num_shards` or more: a smaller `--hours`."""
  removed = []
  for name in sorted(os.listdir(output)):
    stem = name.split(".")[0]
    prefix, _, number = stem.rpartition("-")
    if (prefix in (*SPLITS, "shard") and number.isdigit() and int(number) >= num_shards) or (
        ".tmp" in name):
      os.remove(os.path.join(output, name))
      removed.append(name)
  return removed


def _summarize(sidecars: Sequence[dict[str, Any]]) -> dict[str, Any]:
  rows = [m for s in sidecars for split in SPLITS for m in s["records"][split]]
  by = lambda key: dict(collections.Counter(key(m) for m in rows).most_common())
  augment = collections.Counter(label.split(":")[0] for m in rows for label in m["augment"])
  return {
      "hours": {split: round(sum(s["seconds"][split] for s in sidecars) / 3600, 4)
                for split in SPLITS},
      "audio_seconds": {split: round(sum(s["seconds"][split] for s in sidecars), 2)
                        for split in SPLITS},
      "utterances": {split: sum(len(s["records"][split]) for s in sidecars) for split in SPLITS},
      "failed": [f for s in sidecars for f in s["failed"]],
      "engines": by(lambda m: m["engine"]),
      "voices": len(by(lambda m: m["speaker"])),
      "augmented": {"any": sum(bool(m["augment"]) for m in rows), **dict(augment)},
      "mean_seconds": round(float(np.mean([m["duration"] for m in rows])), 2) if rows else 0.0,
  }


def format_summary(summary: dict[str, Any], max_failed: int = 10) -> str:
  lines = [
      f"{summary['output']}: {summary['hours']['train']:.3f} h train "
      f"({summary['utterances']['train']} utterances), {summary['hours']['validation']:.3f} h "
      f"validation ({summary['utterances']['validation']}), mean {summary['mean_seconds']} s",
      f"shards: {summary['shards']} ({summary['shards_built']} built now, "
      f"{summary['shards_reused']} reused, {len(summary['surplus_removed'])} surplus files "
      f"removed) in {summary['seconds']} s",
      f"engines: {summary['engines']}; {summary['voices']} base voices",
      f"augmented: {summary['augmented']}",
  ]
  failed = summary["failed"]
  if failed:
    lines.append(f"failed utterances: {len(failed)}")
    lines += [f"  {f['key']}: {f['reason']}" for f in failed[:max_failed]]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", required=True, help="Output folder for the shards (a cache).")
  parser.add_argument("--hours", type=float, default=1.0, help="Hours of training audio to make.")
  parser.add_argument("--seed", type=int, default=0,
                      help="Seed: utterance i depends on (seed, i) only.")
  parser.add_argument("--shard_utterances", type=int, default=128, help="Utterances per shard.")
  parser.add_argument("--augment", type=float, default=0.7,
                      help="Probability that an utterance is augmented.")
  parser.add_argument("--room_tone", type=float, default=0.0,
                      help="Probability that an utterance opens and closes on a pause over a "
                           "noise floor, as real recordings do (ROOM_TONE; 0: the corpus of the "
                           "README's measured runs).")
  args = parser.parse_args()
  try:
    summary = make_speech_corpus(args.output, args.hours, seed=args.seed,
                                 shard_utterances=args.shard_utterances,
                                 augment_prob=args.augment, room_tone_prob=args.room_tone)
  except (ValueError, conversations.SynthesisError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(format_summary(summary))


if __name__ == "__main__":
  main()
