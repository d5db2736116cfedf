"""Answers spoken Telugu questions: audio file(s) in, 16 kHz WAV answer(s) out.

    python -m telugu_jax.respond --codec=CODEC --s2s=S2S question.mp3 answer.wav \\
        [--speaker=female_young --emotion=happy --temperature=0.8 --top_p=0.95 --top_k=0 \\
         --seed=0 --max_seconds=10 | --beam_size=8] [--postfilter]
    python -m telugu_jax.respond --codec=CODEC --s2s=S2S questions/ answers/

`--codec` and `--s2s` are converted checkpoints or training workdirs; the S2S model must have been
trained on this codec's codes (same levels and codebook size, checked before any work).
`--speaker` and `--emotion` take an id or a name (`records.SPEAKER_IDS`, `records.EMOTION_IDS`).
Input audio may be WAV, FLAC, MP3 or OGG at any rate, mono or stereo: it is folded to mono,
resampled to 16 kHz and level-normalised as in training. A folder is searched recursively and
mirrored in the output folder, every answer named after its question with `.wav`; a single
question may also go into a folder (an existing one, or a path ending in `/`). Answers are
written to a temporary name and renamed, so no half-written file is left. One line per file
gives the time of each stage (encode, generation with its frames, decode) and the real-time
factor (processing time / answer duration; the first file's times include compilation).

Errors are one line on stderr with exit code 1: a missing or mismatched checkpoint, an unknown
speaker or emotion, or a single question that is unreadable, empty or silent (nothing is
written). In a folder such files are skipped, listed at the end, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import soundfile


def _folder_pairs(source: str, target: str, extensions: tuple[str, ...]
                  ) -> list[tuple[str, str]]:
  """Every audio file under `source` (recursively) and its answer's path mirrored in `target`."""
  if os.path.isfile(target):
    raise FileExistsError(f"{target}: is a file; a folder of questions needs an output folder")
  pairs, seen = [], {}
  for folder, dirs, files in os.walk(source):
    dirs.sort()
    for name in sorted(files):
      if not name.lower().endswith(extensions):
        continue
      relative = os.path.relpath(os.path.join(folder, name), source)
      answer = os.path.join(target, os.path.splitext(relative)[0] + ".wav")
      if answer in seen:
        raise FileExistsError(f"{seen[answer]} and {relative} would both be answered in {answer}")
      seen[answer] = relative
      pairs.append((os.path.join(source, relative), answer))
  if not pairs:
    raise FileNotFoundError(f"{source}: no audio files ({', '.join(extensions)})")
  return pairs


def _pairs(source: str, target: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
  """`(question, answer)` paths: one file, or every audio file of a folder, mirrored."""
  if os.path.isdir(source):
    pairs = _folder_pairs(source, target, extensions)
  elif not os.path.isfile(source):
    raise FileNotFoundError(f"{source}: no such file or folder")
  elif os.path.isdir(target) or target.endswith(("/", os.sep)):
    pairs = [(source, os.path.join(target, os.path.splitext(os.path.basename(source))[0] + ".wav"))]
  else:
    pairs = [(source, target)]
  for question, answer in pairs:
    if os.path.abspath(question) == os.path.abspath(answer):
      raise FileExistsError(f"{answer}: the answer would overwrite its question")
  return pairs


def write_wav(path: str, wave: np.ndarray, sample_rate: int) -> None:
  """Writes 16-bit PCM atomically: a temporary file in the same folder, then a rename."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}.wav")
  try:
    soundfile.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _line(question: str, answer: str, t: dict) -> str:
  ending = "ended" if t["ended"] else f"cut at {t['max_frames']}"
  speed = t["frames"] / max(t["generate_ms"], 1e-9) * 1000.0
  return (f"{question} -> {answer}: question {t['question_seconds']:.2f} s | encode "
          f"{t['encode_ms']:.0f} ms | generate {t['generate_ms']:.0f} ms, {t['frames']} frames "
          f"({ending}, {speed:.0f} frames/s) | decode {t['decode_ms']:.0f} ms | answer "
          f"{t['answer_seconds']:.2f} s, total {t['total_ms']:.0f} ms, RTF {t['rtf']:.2f}")


def _parser() -> argparse.ArgumentParser:
  from telugu_jax.inference import postfilter as postfilter_lib

  parser = argparse.ArgumentParser(prog="python -m telugu_jax.respond",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("input", help="a question audio file or a folder of them")
  parser.add_argument("output", help="the answer WAV (or a folder) / the answers' folder")
  parser.add_argument("--codec", required=True, help="codec checkpoint or training workdir")
  parser.add_argument("--s2s", required=True, help="S2S checkpoint or training workdir")
  parser.add_argument("--speaker", default="0", help="answer speaker: id or name")
  parser.add_argument("--emotion", default="neutral", help="answer emotion: id or name")
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top_p", type=float, default=0.95, help="nucleus mass (1 = off)")
  parser.add_argument("--top_k", type=int, default=0, help="keep the k likeliest codes (0 = all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--beam_size", type=int, default=0,
                      help="> 0: the most likely answer by beam search (sampling unused)")
  parser.add_argument("--max_seconds", type=float, default=10.0, help="longest answer")
  parser.add_argument("--postfilter", default="", type=postfilter_lib.flag,
                      help="post-filter the answer: pitch, formant or pitch,formant (README: "
                      "\"Post-filters at decode\")")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if not args.max_seconds > 0:
    parser.error(f"--max_seconds must be positive, got {args.max_seconds}")
  if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
    parser.error("need --temperature >= 0, --top_k >= 0 and 0 < --top_p <= 1")
  if args.beam_size < 0:
    parser.error(f"--beam_size must be 0 (sampling) or positive, got {args.beam_size}")

  from telugu_jax.data import audio
  from telugu_jax.inference import Responder, load_codec, load_s2s

  try:
    pairs = _pairs(args.input, args.output, audio.AUDIO_EXTENSIONS)
  except OSError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    codec = load_codec(args.codec)
    s2s = load_s2s(args.s2s)
  except (OSError, ValueError, RuntimeError) as e:  # missing, wrong task, unreadable
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1
  try:
    responder = Responder(codec, s2s)
  except ValueError as e:
    print(f"error: --codec={args.codec} and --s2s={args.s2s} do not match: {e}", file=sys.stderr)
    return 1
  try:
    speaker, emotion = responder.speaker_id(args.speaker), responder.emotion_id(args.emotion)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1

  failures = []
  for question, answer in pairs:
    try:
      samples, rate = audio.read_audio(question)
      wave, timings = responder.respond(
          samples, speaker, emotion, sample_rate=rate, max_seconds=args.max_seconds,
          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
          beam_size=args.beam_size, postfilter=args.postfilter)
      write_wav(answer, wave, audio.SAMPLE_RATE)
    except (ValueError, OSError) as e:  # AudioDecodeError and QuestionError are ValueErrors.
      message = str(e) if str(e).startswith(question) else f"{question}: {e}"
      failures.append(message)
      if len(pairs) == 1:
        print(f"error: {message}", file=sys.stderr)
        return 1
      continue
    print(_line(question, answer, timings), flush=True)
  if len(pairs) > 1:
    print(f"answered {len(pairs) - len(failures)} of {len(pairs)} questions into {args.output}")
    for failure in failures:
      print(f"skipped {failure}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
