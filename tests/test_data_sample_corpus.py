"""The bundled sample corpus, its shards, the data report and the throughput benchmark."""

import csv
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from telugu_jax.data import pipelines
from telugu_jax.data import records
from telugu_jax.data import report
from telugu_jax.data import sample_corpus
from telugu_jax.data import shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TELUGU = re.compile("[\u0c00-\u0c7f]")


def corpus_rows():
  path = os.path.join(sample_corpus.CORPUS_DIR, sample_corpus.METADATA_NAME)
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader(f, delimiter="\t"))


def test_bundled_corpus_is_a_few_minutes_of_telugu_in_several_voices():
  rows = corpus_rows()
  speakers = {row["speaker"] for row in rows}
  assert len(speakers) >= 4
  seconds, size = 0.0, 0
  for row in rows:
    path = os.path.join(sample_corpus.CORPUS_DIR, row["path"])
    info = soundfile.info(path)
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
    seconds += info.frames / info.samplerate
    size += os.path.getsize(path)
    assert TELUGU.search(row["text"]) and row["text"] in sample_corpus.read_sentences(
        os.path.join(sample_corpus.CORPUS_DIR, sample_corpus.SENTENCES_NAME))  # fmt: skip
  assert 120 < seconds < 600 and size < 5e6
  for speaker in speakers:
    assert sum(r["split"] == "validation" for r in rows if r["speaker"] == speaker) == 1
  assert len({(r["voice"], r["pitch"], r["speed"]) for r in rows}) == len(speakers)


def test_sample_shards_are_built_once_and_match_the_flac_files(tmp_path):
  built = sample_corpus.sample_shards(tmp_path)
  rows = {row["path"]: row for row in corpus_rows()}
  assert len(built["train"]) == 4 and len(built["validation"]) == 1
  metas = shards.read_index(built["train"] + built["validation"])
  assert sorted(m["key"] for m in metas) == sorted(rows)
  for m in metas:
    assert m["split"] == rows[m["key"]]["split"] and m["transcript"] == rows[m["key"]]["text"]
  first = records.read_records(built["validation"][0])[0]
  arrays, meta = records.decode_record(first)
  flac, _ = soundfile.read(os.path.join(sample_corpus.CORPUS_DIR, meta["key"]), dtype="int16")
  np.testing.assert_array_equal(arrays["pcm"], flac)  # 16 kHz int16 in, the same out

  mtimes = [os.stat(p).st_mtime_ns for p in built["train"]]
  assert sample_corpus.sample_shards(tmp_path) == built  # cached
  assert [os.stat(p).st_mtime_ns for p in built["train"]] == mtimes

  it = pipelines.codec_train_iterator(
      built["train"], batch_size=8, process_index=0, process_count=1
  )
  assert next(it)["audio"].shape == (8, 16000)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_make_corpus_regenerates_identical_clips(tmp_path):
  rows = corpus_rows()
  sentences = sample_corpus.read_sentences(
      os.path.join(sample_corpus.CORPUS_DIR, sample_corpus.SENTENCES_NAME))  # fmt: skip
  made = sample_corpus.make_corpus(
      tmp_path, sentences=sentences, voices=sample_corpus.VOICES[:2], per_voice=2, progress=False
  )
  committed = {r["path"] for r in rows}
  assert len(made) == 4 and {r["path"] for r in made} <= committed
  version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
  for row in made:
    new, _ = soundfile.read(tmp_path / row["path"], dtype="int16")
    assert new.size > 8000
    if "1.51" in version:  # the committed corpus was made with eSpeak NG 1.51
      old, _ = soundfile.read(os.path.join(sample_corpus.CORPUS_DIR, row["path"]), dtype="int16")
      np.testing.assert_array_equal(new, old)


def test_data_report(tmp_path):
  built = sample_corpus.sample_shards(tmp_path / "cache")
  metas = shards.read_index(built["train"] + built["validation"])
  paths = report.write_report(metas, tmp_path / "report")
  summary = report.summarize(metas)
  assert summary["records"] == 72 and summary["speakers"] == 6
  assert summary["hours"] == pytest.approx(sum(m["duration"] for m in metas) / 3600)
  speaker_hours = sum(v["hours"] for v in summary["hours_by_speaker"].values())
  assert speaker_hours == pytest.approx(summary["hours"])
  assert summary["hours_by_split"]["validation"]["records"] == 6
  assert summary["levels"]["records_with_clipping"] == 0
  assert -40 < summary["levels"]["rms_dbfs"]["p50"] < -10
  for kind in ("duration_histogram", "level_histogram"):
    with open(paths[kind], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(paths["markdown"], encoding="utf-8") as f:
    text = f.read()
  assert "| sample_corpus | 0.059 | 72 |" in text and "espeak_te_f2" in text


def test_benchmark_tool_meets_the_throughput_target(tmp_path):
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "benchmark_data.py"), "--steps=40",
       "--warmup=2"],
      capture_output=True, text=True, timeout=120, check=True, env=env,  # fmt: skip
  )
  rate = float(re.search(r"([\d.]+) audio-seconds/s", result.stdout).group(1))
  assert rate >= 50, result.stdout
