"""tools/make_speech_corpus.py: a few seconds of synthetic Telugu speech as codec training shards."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from conftest import load_tool

from telugu_jax.data import audio, conversations, pipelines, records


@pytest.fixture(scope="module")
def tool():
  return load_tool("make_speech_corpus")


def _bytes(folder):
  return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
          if name.endswith(records.SHARD_SUFFIX)}


def test_plans_depend_on_seed_and_index_only_and_keep_validation_texts_apart(tool):
  text_set = conversations.TextSet.load()
  plans = [tool.plan_utterance(text_set, 3, i) for i in range(200)]
  assert plans[17] == tool.plan_utterance(text_set, 3, 17)
  assert plans[17] != tool.plan_utterance(text_set, 4, 17)
  assert {p.split for p in plans} == {"train", "validation"}
  assert all(p.split == text_set.split_of(p.template_id) for p in plans)
  assert {p.voice.engine for p in plans} == {"espeak", "festival"}
  kinds = {name for p in plans for name, _ in p.augment} | {"speed" for p in plans if p.speed != 1}
  assert kinds == {"eq", "reverb", "noise", "speed"}
  assert len({(p.voice.pitch, p.voice.speed) for p in plans}) == len(plans)


def test_peaking_eq_boosts_its_band_and_leaves_others(tool):
  t = np.arange(16000) / 16000
  low, high = np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 2000 * t)
  out = tool.peaking_eq(low + high, 2000.0, 6.0)
  spectrum = np.abs(np.fft.rfft(out[4000:] * np.hanning(12000)))
  reference = np.abs(np.fft.rfft((low + high)[4000:] * np.hanning(12000)))
  gain = 20 * np.log10(spectrum / reference)
  bins = np.fft.rfftfreq(12000, 1 / 16000)
  assert gain[np.argmin(np.abs(bins - 2000))] == pytest.approx(6.0, abs=0.3)
  assert gain[np.argmin(np.abs(bins - 200))] == pytest.approx(0.0, abs=0.5)


def test_makes_resumes_grows_and_shrinks_a_corpus_the_trainer_reads(tool, tmp_path):
  out = tmp_path / "corpus"
  summary = tool.make_speech_corpus(str(out), 2.0 / 3600, seed=5, shard_utterances=2,
                                    progress=False)
  assert summary["audio_seconds"]["train"] >= 2.0 and summary["shards_built"] == summary["shards"]
  seconds = 0.0
  for path in records.list_shards(out, "train"):
    for record in records.read_records(path):
      arrays, meta = records.decode_record(record)
      assert arrays["pcm"].dtype == np.int16 and meta["split"] == "train"
      assert arrays["pcm"].size == round(meta["duration"] * audio.SAMPLE_RATE)
      assert meta["transcript"] and meta["engine"] in ("espeak", "festival")
      seconds += meta["duration"]
  assert seconds == pytest.approx(summary["audio_seconds"]["train"], abs=0.01)
  assert json.loads((out / "summary.json").read_text())["utterances"] == summary["utterances"]
  batch = next(pipelines.codec_train_iterator(records.list_shards(out, "train"), batch_size=2,
                                              crop_samples=4000))
  assert batch["audio"].shape == (2, 4000) and np.abs(batch["audio"]).max() > 0

  before = _bytes(out)
  again = tool.make_speech_corpus(str(out), 2.0 / 3600, seed=5, shard_utterances=2,
                                  progress=False)
  assert again["shards_built"] == 0 and _bytes(out) == before
  more = tool.make_speech_corpus(str(out), 8.0 / 3600, seed=5, shard_utterances=2,
                                 progress=False)
  assert more["shards"] > summary["shards"] and more["shards_reused"] == summary["shards"]
  assert all(_bytes(out)[name] == data for name, data in before.items())
  tool.make_speech_corpus(str(out), 2.0 / 3600, seed=5, shard_utterances=2, progress=False)
  assert _bytes(out) == before and not (out / f"shard-{summary['shards']:05d}.json").exists()


def test_room_tone_pads_the_speech_over_a_noise_floor_and_changes_nothing_else(tool):
  text_set = conversations.TextSet.load()
  for index in range(40):
    toned = tool.plan_utterance(text_set, 3, index, room_tone_prob=1.0)
    assert toned.room_tone and dataclasses.replace(toned, room_tone=()) == tool.plan_utterance(
        text_set, 3, index)
  # Corpora made before the option keep their fingerprints, so their shards are reused.
  old = hashlib.sha256(json.dumps([tool.FORMAT, 0, 2, 128, 0.7, "v1"]).encode()).hexdigest()[:16]
  assert tool._fingerprint(0, 2, 128, 0.7, "v1") == old != tool._fingerprint(0, 2, 128, 0.7, "v1", 0.5)

  plan = dataclasses.replace(toned, augment=(), speed=1.0)
  tone = dict(plan.room_tone)
  speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE)
  out = tool.finish(speech.astype(np.float32), plan)
  lead, trail = (round(tone[k] * audio.SAMPLE_RATE) for k in ("lead_s", "trail_s"))
  assert out.dtype == np.float32 and out.size == audio.SAMPLE_RATE + lead + trail
  level = 10 ** (plan.rms_dbfs / 20)  # the speech's RMS
  expected = np.pad(speech * level / np.sqrt(np.mean(speech**2)), (lead, trail))
  db_under_speech = lambda x: 20 * np.log10(np.sqrt(np.mean(x**2)) / level)
  assert db_under_speech(out - expected) == pytest.approx(-tone["below_db"], abs=0.01)
  assert db_under_speech(out[:lead]) < -tone["below_db"] + 6


def test_rejects_bad_arguments(tool, tmp_path):
  with pytest.raises(ValueError, match="--hours must be positive"):
    tool.make_speech_corpus(str(tmp_path), 0.0)
  with pytest.raises(ValueError, match=r"--augment must lie in \[0, 1\]"):
    tool.make_speech_corpus(str(tmp_path), 1.0, augment_prob=1.5)
  with pytest.raises(ValueError, match=r"--room_tone must lie in \[0, 1\]"):
    tool.make_speech_corpus(str(tmp_path), 1.0, room_tone_prob=-0.1)
