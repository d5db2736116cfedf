"""`tools/evaluate_conversations.py`: the answer scoring on signals whose answer is known, and a
tiny end-to-end run on a pair folder in the `tools/make_conversations.py` shard layout."""

import csv
import json
import pathlib

import numpy as np
import pytest
from conftest import load_tool

from telugu_jax.data import audio, records
from test_respond import save_tiny_models, save_tiny_s2s, tone

RATE = 16000
tool = load_tool("evaluate_conversations")


def _chirp(seconds: float, f0: float, f1: float) -> np.ndarray:
  t = np.arange(int(seconds * RATE)) / RATE
  return (0.3 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))).astype(
      np.float32)


def _candidates() -> list[np.ndarray]:
  """Six answers told apart only by their spectra over time: tones, chirps, a two-tone."""
  two_tone = np.concatenate([_chirp(0.4, 500, 500), _chirp(0.4, 1500, 1500)])
  return [_chirp(0.8, 300, 300), _chirp(0.9, 1200, 1200), _chirp(0.8, 300, 2500),
          _chirp(0.7, 2500, 300), two_tone, _chirp(0.8, 3500, 3500)]


def _distorted(wave: np.ndarray, seed: int) -> np.ndarray:
  """Another level, 8% slower, white noise at 10 dB SNR: what a generated answer might be."""
  rng = np.random.default_rng(seed)
  slower = audio.resample(wave, RATE, int(RATE * 1.08)) * 0.2
  noise = rng.standard_normal(slower.size) * np.sqrt(np.mean(slower ** 2) / 10)
  return (slower + noise).astype(np.float32)


def test_a_noisy_copy_is_nearest_to_its_own_candidate_and_a_shuffle_scores_at_chance():
  candidates = _candidates()
  features = [tool.log_mel(c) for c in candidates]
  np.testing.assert_allclose(tool.log_mel(0.01 * candidates[0]), features[0], atol=1e-4)
  k = len(candidates)
  distances = np.array([[tool.dtw_distance(tool.log_mel(_distorted(c, i)), f) for f in features]
                        for i, c in enumerate(candidates)])
  assert [tool.rank_of(row, i) for i, row in enumerate(distances)] == [1] * k
  assert np.all(distances.argmin(axis=1) == np.arange(k))
  # MCD leaves out the level (c0) and aligns in time: a slower, quieter copy is closest to its
  # own original (white noise would swamp the cepstra of pure tones).
  for i in (0, 2, 4):
    slower = 0.2 * audio.resample(candidates[i], RATE, int(RATE * 1.08))
    mcd = [tool.mel_cepstral_distortion(c, slower) for c in candidates]
    assert int(np.argmin(mcd)) == i and mcd[i] > 0
  assert tool.mel_cepstral_distortion(candidates[1], 0.1 * candidates[1]) == pytest.approx(
      0, abs=1e-3)

  # The same answers scored against a random assignment of right answers: chance (1/k).
  rng = np.random.default_rng(0)
  accuracy = np.mean([np.mean([tool.rank_of(distances[i], right) == 1
                               for i, right in enumerate(rng.permutation(k))])
                      for _ in range(3000)])
  assert accuracy == pytest.approx(1 / k, abs=0.02)

  # Ties count against the right answer; an answer that is empty is last.
  assert tool.rank_of([0.5, 0.5, 0.7], 0) == 2 and tool.rank_of([np.inf] * 4, 1) == 4


def _pair(key, text, speaker, emotion, question, answer):
  return records.encode_record(
      {"question_pcm": audio.float_to_pcm16(question), "answer_pcm": audio.float_to_pcm16(answer)},
      {"kind": "audio_pair", "key": key, "split": key.split("/")[0], "answer_text": text,
       "question_text": f"question {key}", "speaker_id": speaker, "emotion_id": emotion,
       "template_id": "t", "sample_rate": RATE})


def test_end_to_end_on_a_tiny_pair_folder(tmp_path, capsys):
  codec_dir, s2s_dir = save_tiny_models(str(tmp_path / "models"))
  pairs = tmp_path / "pairs"
  answers = {"A": _chirp(0.5, 400, 400), "B": _chirp(0.6, 300, 2000),
             "C": _chirp(0.4, 900, 900), "D": _chirp(0.5, 2000, 600), "E": _chirp(0.3, 700, 700)}
  with records.ShardWriter(pairs / "validation-00000-of-00001.arrayrecord") as writer:
    writer.write(_pair("validation/0", "A", 0, 0, tone(0.5, RATE, 200.0), answers["A"]))
    writer.write(_pair("validation/1", "B", 0, 1, tone(0.4, RATE, 250.0), answers["B"]))
    writer.write(b"not a record")
    # Said again (another emotion, another length): the first rendering stays the reference.
    writer.write(_pair("validation/2", "A", 0, 2, tone(0.6, RATE, 300.0), answers["A"][:6000]))
    writer.write(_pair("validation/3", "C", 1, 0, tone(0.5, RATE, 350.0), answers["C"]))
  with records.ShardWriter(pairs / "validation_voices-00000-of-00001.arrayrecord") as writer:
    writer.write(_pair("validation_voices/0", "D", 2, 0, tone(0.5, RATE, 180.0), answers["D"]))
    writer.write(_pair("validation_voices/1", "E", 2, 3, tone(0.3, RATE, 220.0), answers["E"]))
    writer.write(_pair("validation_voices/2", "D", 2, 0, np.zeros(8000), answers["D"]))
  with records.ShardWriter(pairs / "train-00000-of-00001.arrayrecord") as writer:
    writer.write(_pair("train/0", "F", 0, 0, tone(0.5, RATE), answers["A"]))
  output = tmp_path / "report"

  assert tool.main([f"--codec={codec_dir}", f"--s2s={s2s_dir}", f"--pairs={pairs}",
                    f"--output={output}", "--max_seconds=0.15", "--num_samples=1",
                    "--no_dnsmos"]) == 0  # DNSMOS costs seconds per answer: checked below
  captured = capsys.readouterr()
  assert "validation_voices: 2 pairs, answer accuracy" in captured.out
  assert "(chance 62.5%, 1.8 candidates)" in captured.out  # 1/2, 1/2, 1/2 and 1/1
  assert "validation-00000-of-00001.arrayrecord#2" in captured.err
  assert "validation_voices/2: no speech" in captured.err  # a silent question

  with open(output / "per_pair.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(tool.COLUMNS)
  assert [(r["split"], r["answer_text"], r["candidates"]) for r in rows] == [
      ("validation_voices", "D", "2"), ("validation_voices", "E", "2"), ("validation", "A", "2"),
      ("validation", "B", "2"), ("validation", "A", "2"), ("validation", "C", "1")]
  assert float(rows[4]["reference_seconds"]) == pytest.approx(0.5)  # the first "A"
  for row in rows:
    assert int(row["frames"]) <= 30 and row["ended"] == str(int(row["frames"]) < 30)
    assert 1 <= int(row["rank"]) <= int(row["candidates"])
    assert row["correct"] == str(row["rank"] == "1")
    if int(row["frames"]):
      assert float(row["answer_seconds"]) > 0 and np.isfinite(float(row["mcd"]))
    assert row["dnsmos_ovrl"] == "nan"

  summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
  assert summary["settings"]["references"] == "codec"
  assert summary["settings"]["max_frames"] == 30 and summary["settings"]["frame_rate"] == 200
  assert summary["splits"]["validation"]["chance"] == pytest.approx(0.625)
  assert summary["splits"]["validation_voices"]["accuracy"] == pytest.approx(
      np.mean([r["correct"] == "True" for r in rows[:2]]))
  assert len(summary["skipped"]) == 2 and "arrayrecord#2: " in summary["skipped"][0]
  report = (output / "report.md").read_text(encoding="utf-8")
  assert "## validation_voices (training texts, held-out question voices)" in report
  assert "## validation (texts never seen in training)" in report
  assert "encoded and decoded by the same codec" in report and "(chance 62.5%)" in report

  # One sample per split; its answer and reference WAVs give back the row's DTW distance.
  assert [s["split"] for s in summary["samples"]] == ["validation_voices", "validation"]
  for sample in summary["samples"]:
    assert (output / sample["spectrogram"]).stat().st_size > 0
    waves = {k: audio.load_audio(output / sample[k]) for k in ("question", "answer", "reference")}
    row = next(r for r in rows if r["key"] == sample["key"])
    if waves["answer"].size:
      assert tool.dtw_distance(tool.log_mel(waves["answer"]), tool.log_mel(
          waves["reference"])) == pytest.approx(float(row["dtw_right"]), rel=0.05)

  # Against the recorded references, with DNSMOS of the first answer only; then checkpoints that
  # do not fit: one line, exit code 1.
  assert tool.main([f"--codec={codec_dir}", f"--s2s={s2s_dir}", f"--pairs={pairs}",
                    f"--output={tmp_path / 'original'}", "--max_seconds=0.15", "--max_pairs=2",
                    "--split=validation_voices", "--references=original",
                    "--dnsmos_pairs=1"]) == 0
  report = (tmp_path / "original" / "report.md").read_text(encoding="utf-8")
  assert "the recorded answer audio (not through the codec)" in report
  assert "DNSMOS OVRL of the first 1 answers" in report
  with open(tmp_path / "original" / "per_pair.csv", encoding="utf-8") as f:
    row, unrated = list(csv.DictReader(f))
  assert row["key"] == "validation_voices/0" and row["frames"] == rows[0]["frames"]
  if int(row["frames"]):
    assert all(1.0 <= float(row[f"dnsmos_{k}"]) <= 5.0 for k in tool.DNSMOS)
  assert unrated["key"] == "validation_voices/1" and unrated["dnsmos_ovrl"] == "nan"
  capsys.readouterr()
  other = save_tiny_s2s(str(tmp_path / "other"), vocab_size=16)
  mismatch = "do not match: the codec has 8 levels of 32 codes, the S2S model 8 levels of 16"
  for s2s, message in ((other, mismatch), (codec_dir, "checkpoint (its task is 'codec')")):
    assert tool.main([f"--codec={codec_dir}", f"--s2s={s2s}", f"--pairs={pairs}",
                      f"--output={tmp_path / 'bad'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
  assert not (tmp_path / "bad").exists()


def test_postfilter_filters_the_answers_and_the_codec_references(tmp_path, capsys, monkeypatch):
  from telugu_jax.inference.postfilter import postfilter

  codec_dir, s2s_dir = save_tiny_models(str(tmp_path / "models"))
  pairs = tmp_path / "pairs"
  with records.ShardWriter(pairs / "validation_voices-00000-of-00001.arrayrecord") as writer:
    writer.write(_pair("validation_voices/0", "D", 2, 0, tone(0.5, RATE, 180.0),
                       _chirp(0.5, 200, 600)))
    writer.write(_pair("validation_voices/1", "E", 2, 3, tone(0.3, RATE, 220.0),
                       _chirp(0.3, 700, 700)))
  common = [f"--codec={codec_dir}", f"--s2s={s2s_dir}", f"--pairs={pairs}", "--max_pairs=1",
            "--split=validation_voices", "--max_seconds=0.3", "--num_samples=1", "--no_dnsmos"]
  written = {}  # the float answer and reference of each run's sample, before the 16-bit WAVs
  write_sample = tool.write_sample

  def capture(output, index, pair, answer, reference, label):
    written[pathlib.Path(output).name] = {"answer": answer, "reference": reference}
    return write_sample(output, index, pair, answer, reference, label)

  monkeypatch.setattr(tool, "write_sample", capture)
  for name, extra in (("plain", []), ("filtered", ["--postfilter=formant,pitch"])):
    assert tool.main(common + [f"--output={tmp_path / name}"] + extra) == 0
  summary = json.loads((tmp_path / "filtered" / "summary.json").read_text(encoding="utf-8"))
  assert summary["settings"]["postfilter"] == ["pitch", "formant"]
  report = (tmp_path / "filtered" / "report.md").read_text(encoding="utf-8")
  assert "answers post-filtered (pitch, formant)" in report
  assert "then post-filtered like the answers" in report
  for kind in ("answer", "reference"):
    plain, filtered = written["plain"][kind], written["filtered"][kind]
    assert plain.size > 1000 and np.abs(filtered - plain).max() > 0.01
    np.testing.assert_allclose(filtered, postfilter(plain, "pitch,formant"), atol=1e-5)

  capsys.readouterr()
  with pytest.raises(SystemExit):
    tool.main(common + [f"--output={tmp_path / 'bad'}", "--postfilter=comb"])
  assert "--postfilter: post-filters are pitch, formant" in capsys.readouterr().err
