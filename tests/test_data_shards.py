"""tools/build_shards.py and its library: inputs, splits, bad files, resuming, the summary."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from telugu_jax.data import audio
from telugu_jax.data import records
from telugu_jax.data import report
from telugu_jax.data import shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sine(seconds, rate, freq=220.0, channels=1):
  t = np.arange(int(seconds * rate)) / rate
  wave = 0.3 * np.sin(2 * np.pi * freq * t)
  return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def audio_folder(tmp_path):
  """A folder with good files in several formats/rates/channel counts and three bad files."""
  root = tmp_path / "in"
  (root / "spk_a").mkdir(parents=True)
  (root / "spk_b").mkdir()
  soundfile.write(root / "spk_a" / "one.wav", sine(0.5, 16000), 16000)
  (root / "spk_a" / "one.txt").write_text("ఒకటి\n", encoding="utf-8")
  soundfile.write(root / "spk_a" / "two.flac", sine(0.75, 48000, channels=2), 48000)
  soundfile.write(root / "spk_b" / "three.mp3", sine(1.0, 32000), 32000, format="MP3")
  soundfile.write(root / "spk_b" / "four.ogg", sine(0.4, 22050), 22050, format="OGG")
  soundfile.write(root / "root_level.wav", sine(0.3, 8000), 8000)
  (root / "spk_b" / "corrupt.wav").write_bytes(b"RIFF....WAVEgarbage")
  (root / "empty.flac").write_bytes(b"")
  soundfile.write(root / "spk_b" / "silent_zero_length.wav", np.zeros((0, 1)), 16000)
  (root / "notes.md").write_text("not audio, ignored")
  return root


@pytest.fixture
def bad_audio_folder(tmp_path):
  """Good audio and the bad audio a fault-injection run slipped past the builder."""
  root = tmp_path / "bad"
  root.mkdir()
  soundfile.write(root / "good.wav", sine(0.5, 16000), 16000)
  soundfile.write(root / "truncated.wav", sine(1.0, 16000), 16000, subtype="PCM_16")
  data = (root / "truncated.wav").read_bytes()
  (root / "truncated.wav").write_bytes(data[: len(data) // 2])  # the header still says 1 s
  soundfile.write(root / "clipped.wav", np.clip(10 * sine(0.5, 16000), -1, 1), 16000)
  soundfile.write(root / "silence.wav", np.zeros(40000), 16000)  # 3 all-zero segments of 1 s
  soundfile.write(root / "quiet.wav", 1e-4 * np.sin(np.arange(8000) / 5), 16000, "FLOAT")  # -80 dB
  soundfile.write(root / "half_silent.flac", np.concatenate([sine(1.0, 16000), np.zeros(16000)]),
                  16000)  # fmt: skip
  return root


def strict_json(path):
  """Parses a file as standard JSON: `NaN`, `Infinity` and `-Infinity` are errors."""
  with open(path, encoding="utf-8") as f:
    return json.loads(f.read(), parse_constant=lambda name: pytest.fail(f"{path}: {name}"))


def all_records(output_dir):
  out = {}
  for path in records.list_shards(output_dir):
    for data in records.read_records(path):
      arrays, meta = records.decode_record(data)
      out[(meta["key"], meta["segment"])] = (arrays["pcm"], meta)
  return out


def test_folder_build_skips_bad_files_and_reports_them(audio_folder, tmp_path):
  out = tmp_path / "out"
  summary = shards.build_shards(audio_folder, out, shard_size=2, progress=False)

  recs = all_records(out)
  assert {key for key, _ in recs} == {
      "spk_a/one.wav", "spk_a/two.flac", "spk_b/three.mp3", "spk_b/four.ogg", "root_level.wav"
  }  # fmt: skip
  skipped = {entry["path"]: entry["reason"] for entry in summary["skipped"]}
  assert set(skipped) == {"spk_b/corrupt.wav", "empty.flac", "spk_b/silent_zero_length.wav"}
  assert "spk_b/corrupt.wav: cannot decode audio" in skipped["spk_b/corrupt.wav"]
  assert skipped["empty.flac"] == "empty.flac: empty file (0 bytes)"
  assert "contains no audio samples" in skipped["spk_b/silent_zero_length.wav"]
  assert summary["files"] == 5 and len(summary["skipped"]) == 3

  pcm, meta = recs[("spk_a/two.flac", 0)]  # 48 kHz stereo -> 16 kHz mono
  assert pcm.dtype == np.int16 and pcm.shape == (12000,)
  assert meta["orig_sample_rate"] == 48000 and meta["orig_channels"] == 2
  assert meta["speaker"] == "spk_a" and meta["source"] == "in"
  assert meta["duration"] == pytest.approx(0.75)
  assert recs[("spk_a/one.wav", 0)][1]["transcript"] == "ఒకటి"
  assert recs[("root_level.wav", 0)][1]["speaker"] == ""
  assert recs[("root_level.wav", 0)][0].shape == (4800,)  # 0.3 s at 8 kHz -> 16 kHz
  assert meta["peak"] == pytest.approx(0.3, abs=1e-3)  # level statistics of the source
  assert meta["rms_dbfs"] == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.05)

  total_seconds = sum(m["duration"] for _, m in recs.values())
  assert summary["hours"] == pytest.approx(total_seconds / 3600)
  with open(out / "summary.json", encoding="utf-8") as f:
    assert json.load(f)["skipped"] == summary["skipped"]
  for key, (_, m) in recs.items():  # hash splits, identical to split_for_key
    assert m["split"] == shards.split_for_key(key[0], 0.1)


def test_resume_skips_finished_shards_and_rebuilds_changed_ones(audio_folder, tmp_path):
  out = tmp_path / "out"
  first = shards.build_shards(audio_folder, out, shard_size=2, progress=False)
  assert first["shards_reused"] == 0
  mtimes = {p: os.stat(p).st_mtime_ns for p in records.list_shards(out)}

  second = shards.build_shards(audio_folder, out, shard_size=2, progress=False)
  assert second["shards_built"] == 0 and second["shards_reused"] == len(mtimes)
  assert {p: os.stat(p).st_mtime_ns for p in records.list_shards(out)} == mtimes
  assert second["splits"] == first["splits"]

  # A changed input file invalidates exactly the shard that holds it.
  soundfile.write(audio_folder / "spk_a" / "one.wav", sine(0.9, 16000), 16000)
  third = shards.build_shards(audio_folder, out, shard_size=2, progress=False)
  assert third["shards_built"] == 1
  assert all_records(out)[("spk_a/one.wav", 0)][0].shape == (14400,)

  # A shard without its sidecar (a build stopped between writing the two) is rebuilt.
  os.remove(records.list_shards(out)[0] + ".json")
  fourth = shards.build_shards(audio_folder, out, shard_size=2, progress=False)
  assert fourth["shards_built"] == 1


def test_manifests_csv_and_jsonl_with_splits(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  for i in range(4):
    soundfile.write(data / f"u{i}.wav", sine(0.2 + 0.1 * i, 16000), 16000)
  csv_manifest = tmp_path / "m.csv"
  csv_manifest.write_text(
      "path,speaker,emotion,text,split\n"
      "data/u0.wav,female_young,happy,నమస్తే,train\n"
      "data/u1.wav,male_young,neutral,రండి,dev\n"
      "data/u2.wav,male_young,,,\n"
      "data/missing.wav,x,,,train\n",
      encoding="utf-8",
  )
  summary = shards.build_shards(csv_manifest, tmp_path / "out_csv", progress=False)
  recs = all_records(tmp_path / "out_csv")
  meta0 = recs[("data/u0.wav", 0)][1]
  assert (meta0["speaker"], meta0["emotion"], meta0["transcript"], meta0["split"]) == (
      "female_young", "happy", "నమస్తే", "train")  # fmt: skip
  assert recs[("data/u1.wav", 0)][1]["split"] == "validation"  # "dev" is an alias
  assert recs[("data/u2.wav", 0)][1]["split"] == shards.split_for_key("data/u2.wav", 0.1)
  assert [e["path"] for e in summary["skipped"]] == ["data/missing.wav"]
  assert "file not found" in summary["skipped"][0]["reason"]
  assert records.list_shards(tmp_path / "out_csv", "validation")

  jsonl = tmp_path / "m.jsonl"
  jsonl.write_text(
      json.dumps({"path": str(data / "u3.wav"), "speaker": "s", "text": "మూడు", "source": "mine"},
                 ensure_ascii=False) + "\n",  # fmt: skip
      encoding="utf-8",
  )
  shards.build_shards(jsonl, tmp_path / "out_jsonl", progress=False)
  (_, meta), = all_records(tmp_path / "out_jsonl").values()
  assert meta["source"] == "mine" and meta["transcript"] == "మూడు"

  bad = tmp_path / "bad.csv"
  bad.write_text("file,speaker\nx.wav,s\n")
  with pytest.raises(ValueError, match="bad.csv: header has no 'path' column"):
    shards.build_shards(bad, tmp_path / "out_bad", progress=False)
  bad_split = tmp_path / "bad_split.tsv"
  bad_split.write_text("path\tsplit\ndata/u0.wav\tholdout\n")
  with pytest.raises(ValueError, match=r"bad_split.tsv:2: unknown split 'holdout'"):
    shards.build_shards(bad_split, tmp_path / "out_bad2", progress=False)


def test_long_files_are_cut_into_equal_segments(tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  soundfile.write(src / "long.wav", sine(2.5, 16000), 16000)
  (src / "long.txt").write_text("పొడవైన")
  shards.build_shards(src, tmp_path / "out", max_seconds=1.0, progress=False)
  recs = all_records(tmp_path / "out")
  assert sorted(seg for _, seg in recs) == [0, 1, 2]
  lengths = [recs[("long.wav", s)][0].shape[0] for s in range(3)]
  assert sum(lengths) == 40000 and max(lengths) <= 16000 and max(lengths) - min(lengths) <= 1
  assert all(m["transcript"] == "" and m["num_segments"] == 3 for _, m in recs.values())
  joined = np.concatenate([recs[("long.wav", s)][0] for s in range(3)])
  np.testing.assert_array_equal(joined, audio.float_to_pcm16(audio.load_audio(src / "long.wav")))


def test_split_hash_is_deterministic_and_near_the_fraction():
  keys = [f"speaker{i % 7}/utt{i:05d}.wav" for i in range(4000)]
  splits = [shards.split_for_key(k, 0.1) for k in keys]
  assert splits == [shards.split_for_key(k, 0.1) for k in keys]
  assert 0.08 < splits.count("validation") / len(keys) < 0.12
  assert shards.split_for_key("a.wav", 0.0) == "train"
  assert shards.split_for_key("a.wav", 1.0) == "validation"


def test_command_line_tool_with_worker_processes(audio_folder, tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "build_shards.py"), f"--input={audio_folder}",
       f"--output={tmp_path / 'out'}", "--workers=2", "--shard_size=2"],  # fmt: skip
      capture_output=True, text=True, timeout=120, check=True,  # fmt: skip
  )
  assert "5 files" in result.stdout and "3 files skipped" in result.stdout
  assert "spk_b/corrupt.wav: cannot decode audio" in result.stdout
  in_process = shards.build_shards(audio_folder, tmp_path / "ref", shard_size=2, progress=False)
  assert all_records(tmp_path / "out").keys() == all_records(tmp_path / "ref").keys()
  for key, (pcm, _) in all_records(tmp_path / "out").items():
    np.testing.assert_array_equal(pcm, all_records(tmp_path / "ref")[key][0])
  assert in_process["files"] == 5


def test_shard_writer_is_atomic(tmp_path):
  path = tmp_path / "train-00000-of-00001.arrayrecord"
  with pytest.raises(KeyboardInterrupt):
    with records.ShardWriter(path) as writer:
      writer.write(records.encode_record({"pcm": np.zeros(4, np.int16)}, {}))
      raise KeyboardInterrupt  # e.g. the build is stopped mid-shard
  assert os.listdir(tmp_path) == []  # neither a shard nor a temporary file is left
  with records.ShardWriter(path) as writer:
    writer.write(records.encode_record({"pcm": np.ones(4, np.int16)}, {"k": 1}))
  assert os.listdir(tmp_path) == [path.name]
  assert records.shard_lengths([path]) == [1]


def test_bad_audio_is_skipped_with_reasons_by_default(bad_audio_folder, tmp_path):
  out = tmp_path / "out"
  summary = shards.build_shards(bad_audio_folder, out, max_seconds=1.0, progress=False)
  assert set(all_records(out)) == {("good.wav", 0), ("half_silent.flac", 0)}
  assert all(meta["problems"] == [] for _, meta in all_records(out).values())
  skipped = {entry["path"]: entry for entry in summary["skipped"]}
  assert set(skipped) == {"truncated.wav", "clipped.wav", "silence.wav", "quiet.wav"}
  assert skipped["truncated.wav"]["reason"].startswith(
      "truncated.wav: truncated: the header declares 16000 frames (1.00 s), the file holds 79")
  assert skipped["truncated.wav"]["problems"] == ["truncated"]
  assert re.fullmatch(r"clipped.wav: clipped: 7\d\.\d\d% of samples at full scale \(limit 1.00%\)",
                      skipped["clipped.wav"]["reason"])  # fmt: skip
  assert skipped["silence.wav"]["reason"] == (
      "silence.wav: all 3 segments rejected (3 silent); the first: silent: peak -inf dBFS, RMS "
      "-inf dBFS (limits -60 and -70 dBFS)")
  assert skipped["quiet.wav"]["reason"].startswith("quiet.wav: silent: peak -80.")
  assert summary["skipped_segments"] == [{
      "path": "half_silent.flac", "segment": 1, "problems": ["silent"],
      "reason": "half_silent.flac (segment 2 of 2, 1.0-2.0 s): silent: peak -inf dBFS, RMS -inf "
                "dBFS (limits -60 and -70 dBFS)"}]  # fmt: skip
  assert summary["files"] == 2 and summary["warnings"] == []
  assert summary["quality"] == dataclasses.asdict(shards.QualityRules())
  assert strict_json(out / "summary.json") == summary
  for path in records.list_shards(out):
    strict_json(path + ".json")

  # Looser rules let the clipped and the quiet file through.
  loose = shards.QualityRules(max_clipped_fraction=0.9, min_peak_dbfs=-90, min_rms_dbfs=-100)
  summary = shards.build_shards(bad_audio_folder, tmp_path / "loose", max_seconds=1.0,
                                quality=loose, progress=False)  # fmt: skip
  assert {e["path"] for e in summary["skipped"]} == {"truncated.wav", "silence.wav"}


def test_bad_audio_is_kept_and_flagged_on_request(bad_audio_folder, tmp_path):
  out = tmp_path / "out"
  summary = shards.build_shards(bad_audio_folder, out, max_seconds=1.0, progress=False,
                                quality=shards.QualityRules(keep_bad_audio=True))  # fmt: skip
  recs = all_records(out)
  problems = {key: meta["problems"] for key, (_, meta) in recs.items()}
  assert problems == {
      ("good.wav", 0): [], ("truncated.wav", 0): ["truncated"], ("clipped.wav", 0): ["clipped"],
      ("silence.wav", 0): ["silent"], ("silence.wav", 1): ["silent"],
      ("silence.wav", 2): ["silent"], ("quiet.wav", 0): ["silent"],
      ("half_silent.flac", 0): [], ("half_silent.flac", 1): ["silent"]}  # fmt: skip
  pcm, meta = recs[("truncated.wav", 0)]
  assert 7900 < pcm.size < 8000 and meta["duration"] == pytest.approx(pcm.size / 16000)
  assert recs[("silence.wav", 1)][1]["rms_dbfs"] is None  # standard JSON: null, not -Infinity
  assert recs[("half_silent.flac", 0)][1]["rms_dbfs"] == pytest.approx(-13.5, abs=0.1)
  assert summary["skipped"] == [] and summary["skipped_segments"] == []
  warnings = [(entry["path"], entry.get("segment")) for entry in summary["warnings"]]
  assert sorted(warnings, key=str) == sorted(
      [("truncated.wav", None), ("clipped.wav", 0), ("silence.wav", 0), ("silence.wav", 1),
       ("silence.wav", 2), ("quiet.wav", 0), ("half_silent.flac", 1)], key=str)  # fmt: skip
  assert summary["warnings"][-1]["reason"].endswith("; kept what it holds")
  assert strict_json(out / "summary.json") == summary
  for path in records.list_shards(out):
    strict_json(path + ".json")

  # The data report reads the sidecars' nulls as silence.
  metas = shards.read_index(records.list_shards(out))
  levels = report.summarize(metas)["levels"]
  assert levels["silent_records"] == 4 and levels["records_with_clipping"] == 1
  written = report.write_report(metas, tmp_path / "report")
  assert strict_json(written["json"])["levels"]["silent_records"] == 4


def test_rerun_removes_temporary_files_of_an_interrupted_build(bad_audio_folder, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  leftovers = ["summary.json.tmp-17", "train-00000-of-00001.arrayrecord.json.tmp-4242",
               "train-00000-of-00001.arrayrecord.tmp-4242"]  # fmt: skip
  for name in leftovers + ["notes.tmp-1.txt"]:
    (out / name).write_bytes(b"partial")
  summary = shards.build_shards(bad_audio_folder, out, progress=False)
  assert summary["removed_temporary_files"] == leftovers
  assert not [name for name in os.listdir(out) if ".tmp-" in name and name != "notes.tmp-1.txt"]


def test_command_line_quality_flags(bad_audio_folder, tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "build_shards.py"),
       f"--input={bad_audio_folder}", f"--output={tmp_path / 'out'}", "--workers=1",
       "--max_seconds=1", "--keep_bad_audio",
       "--max_clipped_fraction=0.9", "--min_peak_dbfs=-90", "--min_rms_dbfs=-100"],  # fmt: skip
      capture_output=True, text=True, timeout=120, check=True,  # fmt: skip
  )
  assert "6 files" in result.stdout and "5 warnings (bad audio kept):" in result.stdout
  assert "silence.wav (segment 3 of 3, 1.7-2.5 s): silent" in result.stdout
  assert strict_json(tmp_path / "out" / "summary.json")["quality"] == {
      "max_clipped_fraction": 0.9, "min_peak_dbfs": -90.0, "min_rms_dbfs": -100.0,
      "keep_bad_audio": True}  # fmt: skip
