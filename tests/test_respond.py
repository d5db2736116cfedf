"""Speech in, speech out (`telugu_jax.inference.respond`, `python -m telugu_jax.respond`) with a
tiny random codec and S2S model: files, formats, folders and every bad input."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from configs import codec as codec_configs
from configs import s2s as s2s_configs
from telugu_jax import checkpoints
from telugu_jax import respond
from telugu_jax.data import audio
from telugu_jax.inference import Responder, load_codec, load_s2s
from telugu_jax.inference.postfilter import formant_postfilter, pitch_postfilter
from telugu_jax.inference.respond import QuestionError
from telugu_jax.models.codec import Codec
from telugu_jax.models.s2s import S2SConfig
from test_s2s_model import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SECONDS = "0.15"  # 30 frames: every answer fits one decode bucket, generation compiles once


def save_tiny_models(directory, vocab_size: int = 32, causal: bool = False) -> tuple[str, str]:
  """A random smoke codec (8 levels of 32 codes; `causal`: `streaming_smoke`) and a smoke S2S
  model of `vocab_size` codes, saved as converted checkpoints in `directory/codec` and
  `directory/s2s`.

  Weights are drawn in the shapes `init` would give (no compilation); Snake's `alpha` is 1.
  """
  config = codec_configs.get_config("streaming_smoke" if causal else "smoke")
  shapes = jax.eval_shape(Codec(**config.codec).init, jax.random.key(0), jnp.zeros((1, 4000)))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda key, s: np.ones(s.shape, s.dtype) if key[-1].key == "alpha"
      else rng.standard_normal(s.shape).astype(s.dtype), shapes)
  codec_dir = os.path.join(directory, "codec")
  checkpoints.save(codec_dir, 0, {"gen": variables},
                   checkpoints.model_meta("codec", codec=config.codec.to_dict()))
  return codec_dir, save_tiny_s2s(os.path.join(directory, "s2s"), vocab_size)


def save_tiny_s2s(directory, vocab_size: int) -> str:
  """A random smoke S2S model (8 levels of `vocab_size` codes) saved in `directory`."""
  model = {**s2s_configs.get_config("smoke").model.to_dict(), "vocab_size": vocab_size,
           "num_quantizers": 8}
  config = S2SConfig.from_dict(model)
  _, variables = random_variables(config, seed=1)
  checkpoints.save(directory, 0, variables, checkpoints.model_meta(
      "s2s", variant=config.variant, model=config.to_dict()))
  return directory


def tone(seconds: float, rate: int, freq: float = 220.0, channels: int = 1) -> np.ndarray:
  """A vibrato tone `[T]` (or `[T, channels]`, quieter in later channels)."""
  t = np.arange(int(seconds * rate)) / rate
  wave = 0.3 * np.sin(2 * np.pi * freq * t + 3 * np.sin(2 * np.pi * 4 * t))
  if channels == 1:
    return wave.astype(np.float32)
  return np.stack([wave / (1 + c) for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return save_tiny_models(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def other_s2s(tmp_path_factory):
  """An S2S model of 16 codes per level: it does not fit the codec's 32."""
  return save_tiny_s2s(str(tmp_path_factory.mktemp("other") / "s2s"), vocab_size=16)


def _run(models, *args):
  codec_dir, s2s_dir = models
  return respond.main([f"--codec={codec_dir}", f"--s2s={s2s_dir}", f"--max_seconds={MAX_SECONDS}",
                       "--seed=3", *map(str, args)])


def test_responder_prepares_like_training_and_derives_the_frame_rate(models, other_s2s):
  codec, s2s = load_codec(models[0]), load_s2s(models[1])
  responder = Responder(codec, s2s)
  # The hop is the product of the strides; num_samples(1) is not (the decoder's edge).
  assert responder.hop == 80 and codec.num_samples(1) != 80 and responder.frame_rate == 200.0
  assert responder.max_frames(10) == 2000 and responder.max_frames(0.001) == 1
  stereo = tone(0.5, 44100, channels=2)
  prepared = responder.prepare(stereo, 44100)
  expected = audio.normalize_rms(audio.resample(stereo.mean(axis=1), 44100, 16000))
  np.testing.assert_allclose(prepared, expected, atol=1e-6)
  assert np.sqrt(np.mean(prepared ** 2)) == pytest.approx(audio.TARGET_RMS, rel=1e-3)
  for bad, message in ((np.zeros(8000), "no speech: silent"), (np.zeros(0), "empty audio"),
                       (np.full(100, np.nan), "NaN"), (tone(0.0005, 16000), "one code frame")):
    with pytest.raises(QuestionError, match=message):
      responder.prepare(bad)
  with pytest.raises(ValueError, match="unknown emotion 'angry'"):
    responder.respond(tone(0.5, 16000), emotion="angry")
  with pytest.raises(ValueError, match="speaker id 7 is outside the model's range 0..3"):
    responder.respond(tone(0.5, 16000), speaker=7)

  answer, timings = responder.respond(tone(0.5, 16000), "female_young", "happy",
                                      max_seconds=float(MAX_SECONDS), seed=3)
  assert answer.dtype == np.float32 and answer.ndim == 1
  assert answer.size == (codec.num_samples(timings["frames"]) if timings["frames"] else 0)
  assert timings["max_frames"] == 30 and timings["ended"] == (timings["frames"] < 30)
  assert timings["question_frames"] == codec.num_frames(8000)
  assert timings["total_ms"] >= timings["encode_ms"] + timings["generate_ms"] + timings["decode_ms"]
  if answer.size:
    assert timings["rtf"] == pytest.approx(timings["total_ms"] / 1000 / timings["answer_seconds"])

  # Beam search of width 1 is greedy decoding.
  greedy, _ = responder.respond(tone(0.5, 16000), max_seconds=float(MAX_SECONDS), temperature=0.0)
  beam, _ = responder.respond(tone(0.5, 16000), max_seconds=float(MAX_SECONDS), beam_size=1)
  np.testing.assert_array_equal(beam, greedy)
  filtered, _ = responder.respond(tone(0.5, 16000), max_seconds=float(MAX_SECONDS),
                                  temperature=0.0, postfilter="formant,pitch")
  assert greedy.size >= 512  # a frame of the post-filter at least
  np.testing.assert_array_equal(filtered, formant_postfilter(pitch_postfilter(greedy)))
  assert not np.allclose(filtered, greedy, atol=1e-4)

  with pytest.raises(ValueError, match="8 levels of 32 codes, the S2S model 8 levels of 16"):
    Responder(codec, load_s2s(other_s2s))


def test_file_in_file_out_from_any_format(models, tmp_path, capsys):
  mp3 = tmp_path / "question.mp3"
  soundfile.write(mp3, tone(0.6, 44100, channels=2), 44100, format="MP3")
  flac = tmp_path / "question.flac"
  soundfile.write(flac, tone(0.6, 44100, 330.0, channels=2), 44100)
  for question in (mp3, flac):
    answer = tmp_path / f"{question.suffix[1:]}_answer.wav"
    assert _run(models, "--speaker=female_young", "--emotion=3", question, answer) == 0
    out = capsys.readouterr().out
    match = re.search(r"encode \d+ ms \| generate \d+ ms, (\d+) frames \(.*\) \| decode \d+ ms "
                      r"\| answer ([\d.]+) s, total \d+ ms, RTF [\d.]+", out)
    assert match, out
    info = soundfile.info(answer)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == load_codec(models[0]).num_samples(int(match.group(1)))
  assert _run(models, "--beam_size=3", mp3, tmp_path / "beam_answer.wav") == 0
  assert soundfile.info(tmp_path / "beam_answer.wav").samplerate == 16000
  # The post-filter changes the answer's samples, not its length.
  assert _run(models, "--beam_size=3", "--postfilter=pitch,formant", mp3,
              tmp_path / "filtered.wav") == 0
  beam, filtered = (soundfile.read(tmp_path / name)[0] for name in ("beam_answer.wav",
                                                                    "filtered.wav"))
  assert filtered.shape == beam.shape and not np.array_equal(filtered, beam)
  # Into an existing folder: named after the question.
  assert _run(models, mp3, tmp_path) == 0
  assert soundfile.info(tmp_path / "question.wav").samplerate == 16000
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_folder_in_folder_out_skips_bad_files(models, tmp_path, capsys):
  questions = tmp_path / "questions"
  (questions / "sub").mkdir(parents=True)
  soundfile.write(questions / "a.wav", tone(0.5, 16000), 16000)
  soundfile.write(questions / "sub" / "b.flac", tone(0.7, 48000, 440.0, channels=2), 48000)
  soundfile.write(questions / "sub" / "silent.wav", np.zeros(16000), 16000)
  (questions / "broken.mp3").write_bytes(b"ID3 not really an mp3")
  (questions / "notes.txt").write_text("not audio")
  answers = tmp_path / "answers"
  assert _run(models, questions, answers) == 1
  captured = capsys.readouterr()
  assert "answered 2 of 4 questions" in captured.out
  assert captured.out.count("RTF") == 2
  skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
  assert len(skipped) == 2
  assert any("broken.mp3: cannot decode audio" in line for line in skipped)
  assert any("silent.wav: no speech" in line for line in skipped)
  written = sorted(os.path.relpath(os.path.join(d, f), answers)
                   for d, _, files in os.walk(answers) for f in files)
  assert written == ["a.wav", os.path.join("sub", "b.wav")]


def test_bad_inputs_are_one_line_errors_and_write_nothing(models, other_s2s, tmp_path, capsys):
  codec_dir, s2s_dir = models
  good = tmp_path / "good.wav"
  soundfile.write(good, tone(0.5, 16000), 16000)
  (tmp_path / "empty.wav").write_bytes(b"")
  (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00garbage")
  soundfile.write(tmp_path / "silent.flac", np.zeros(16000), 16000)
  out = tmp_path / "out"
  out.mkdir()
  cases = [
      ([f"--codec={codec_dir}", f"--s2s={s2s_dir}", tmp_path / "empty.wav"], "empty file"),
      ([f"--codec={codec_dir}", f"--s2s={s2s_dir}", tmp_path / "garbage.wav"], "cannot decode"),
      ([f"--codec={codec_dir}", f"--s2s={s2s_dir}", tmp_path / "silent.flac"], "no speech"),
      ([f"--codec={codec_dir}", f"--s2s={s2s_dir}", tmp_path / "none.wav"], "no such file"),
      ([f"--codec={tmp_path / 'nowhere'}", f"--s2s={s2s_dir}", good], "nowhere: no checkpoint"),
      ([f"--codec={codec_dir}", f"--s2s={codec_dir}", good], "checkpoint (its task is 'codec')"),
      ([f"--codec={codec_dir}", f"--s2s={other_s2s}", good],
       f"--codec={codec_dir} and --s2s={other_s2s} do not match: the codec has 8 levels of 32 "
       "codes, the S2S model 8 levels of 16 codes"),
      ([f"--codec={codec_dir}", f"--s2s={s2s_dir}", "--speaker=robot", good], "unknown speaker"),
  ]
  for args, message in cases:
    assert respond.main([*map(str, args), str(out / "answer.wav")]) == 1, message
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, (message, err)
    assert os.listdir(out) == [], message

  assert respond.main([f"--codec={codec_dir}", f"--s2s={s2s_dir}", str(good), str(good)]) == 1
  assert "good.wav: the answer would overwrite its question" in capsys.readouterr().err

  # The module entry point: the exit code and the one-line message of a real process.
  result = subprocess.run(
      [sys.executable, "-m", "telugu_jax.respond", f"--codec={tmp_path / 'nowhere'}",
       f"--s2s={s2s_dir}", str(good), str(out / "answer.wav")],
      capture_output=True, text=True, cwd=ROOT, check=False)
  assert result.returncode == 1 and os.listdir(out) == []
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stderr.startswith(f"error: {tmp_path / 'nowhere'}: no checkpoint")
