"""tools/make_conversations.py and telugu_jax/data/conversations.py: the Telugu text set, number
words, planning and splits, synthesis, imports of recorded pairs and code pair shards."""

import calendar
import collections
import datetime
import json
import pathlib
import re
import subprocess
import sys
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from conftest import load_tool

from configs import codec as codec_configs
from telugu_jax import checkpoints
from telugu_jax.data import conversations
from telugu_jax.data import pipelines
from telugu_jax.data import records
from telugu_jax.data import shards
from telugu_jax.models.codec import Codec

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL_PATH = ROOT / "tools" / "make_conversations.py"
tool = load_tool("make_conversations")


@pytest.fixture(scope="module")
def text_set():
  return conversations.TextSet.load()


@pytest.fixture(scope="module")
def engines():
  try:
    conversations.check_engines()
  except conversations.SynthesisError as e:
    pytest.skip(f"offline TTS unavailable ({e}); .ci/run installs espeak-ng, festival and "
                "festvox-te-nsk")


def _ints(text):
  return [int(x) for x in re.findall(r"\d+", text)]


# ------------------------------------------------------------------------------------------------
# Texts.


def test_text_set_size_topics_and_expansions(text_set):
  templates = text_set.templates
  assert text_set.version == "1.0.0"
  assert len({(t.question, t.answer) for t in templates}) >= 300
  topics = collections.Counter(t.topic for t in templates)
  required = {"greetings", "well_being", "names", "time_dates", "weather", "numbers", "family",
              "food", "places", "shopping", "health", "travel", "help_thanks", "goodbyes"}
  assert required <= set(topics) and len(topics) >= 12 and min(topics.values()) >= 15
  every = [text_set.expand(t, i) for t in templates for i in range(text_set.num_expansions(t))]
  assert len({(p.question, p.answer) for p in every}) >= 30000
  rng = np.random.default_rng(0)
  sample = [text_set.sample(rng) for _ in range(3000)]
  assert len({(p.question, p.answer) for p in sample}) >= 1200
  for pair in every:  # every filling is complete, in Telugu and in English
    for text in (pair.question, pair.answer, pair.question_en, pair.answer_en):
      assert text and "{" not in text and "}" not in text, (pair.template_id, text)
      assert unicodedata.is_normalized("NFC", text), (pair.template_id, text)
    assert re.search("[\u0c00-\u0c7f]", pair.question + pair.answer), pair.template_id
  for name in ("pairs_te.jsonl", "slots_te.json", "README.md", "LICENSE"):
    assert (pathlib.Path(conversations.ASSET_DIR) / name).is_file()


def test_number_words_match_hand_written_telugu():
  cardinals = {
      0: "సున్నా", 1: "ఒకటి", 2: "రెండు", 7: "ఏడు", 10: "పది", 11: "పదకొండు", 14: "పద్నాలుగు",
      15: "పదిహేను", 19: "పందొమ్మిది", 20: "ఇరవై", 25: "ఇరవై ఐదు", 42: "నలభై రెండు",
      70: "డెబ్బై", 99: "తొంభై తొమ్మిది", 100: "వంద", 101: "నూట ఒకటి", 150: "నూట యాభై",
      200: "రెండు వందలు", 365: "మూడు వందల అరవై ఐదు", 1000: "వెయ్యి",
      1500: "వెయ్యి ఐదు వందలు", 2025: "రెండు వేల ఇరవై ఐదు", 100000: "ఒక లక్ష",
  }
  for n, words in cardinals.items():
    assert conversations.cardinal(n) == words, n
  assert [conversations.attributive(n) for n in (1, 3, 200, 31, 5000)] == [
      "ఒక", "మూడు", "రెండు వందల", "ముప్పై ఒక్క", "ఐదు వేల"]
  assert [conversations.ordinal(n) for n in (1, 2, 10, 15, 20, 21, 30)] == [
      "ఒకటవ", "రెండవ", "పదవ", "పదిహేనవ", "ఇరవయ్యవ", "ఇరవై ఒకటవ", "ముప్పయ్యవ"]
  assert conversations.year_words(1950) == "పందొమ్మిది వందల యాభై"
  assert conversations.year_words(2024) == "రెండు వేల ఇరవై నాలుగు"
  assert conversations.weekday_names()[:2] == ["సోమవారం", "మంగళవారం"]
  assert conversations.month_names()[2] == "మార్చి"


def test_computed_answers_answer_their_questions(text_set):
  def pairs(template_id):
    t = text_set.by_id[template_id]
    return [text_set.expand(t, i) for i in range(text_set.num_expansions(t))]

  for p in pairs("num-002"):  # a + b
    (a, b), (_, _, c) = _ints(p.question_en), _ints(p.answer_en)
    assert c == a + b
  for p in pairs("num-004"):  # a - b
    (a, b), (_, _, c) = _ints(p.question_en), _ints(p.answer_en)
    assert c == a - b
  for p in pairs("num-005"):
    (a, b), (_, _, c) = _ints(p.question_en), _ints(p.answer_en)
    assert c == a * b
  for p in pairs("num-007"):  # chocolates shared equally
    (total, people), (each,) = _ints(p.question_en), _ints(p.answer_en)
    assert each * people == total
  for p in pairs("shop-002"):  # change from a note
    (bill, note), (change,) = _ints(p.question_en), _ints(p.answer_en)
    assert change == note - bill > 0
  for p in pairs("time-009"):  # weekday of a date (CLDR names vs the calendar)
    month, day, year = re.match(r"(\w+) (\d+), (\d+) is a (\w+)", p.answer_en).groups()[:3]
    weekday = calendar.day_name[datetime.date(int(year), list(calendar.month_name).index(month),
                                              int(day)).weekday()]
    assert p.answer_en.endswith(f"is a {weekday}.")
  p = text_set.expand(text_set.by_id["time-009"], 0)
  assert p.question == "రెండు వేల ఇరవై నాలుగు, జనవరి ఒకటవ తేదీ ఏ వారం?"
  assert p.answer == "రెండు వేల ఇరవై నాలుగు, జనవరి ఒకటవ తేదీ సోమవారం."
  p = text_set.expand(text_set.by_id["shop-001"], 1)
  assert p.question == "ఒక కిలో టమాటాలు ఇరవై రూపాయలు అయితే, మూడు కిలోలు ఎంత అవుతుంది?"
  assert p.answer == "మూడు కిలోల టమాటాలకు అరవై రూపాయలు అవుతుంది."


def test_plans_are_deterministic_and_splits_disjoint_by_text(text_set):
  plans = [conversations.plan_pair(text_set, 7, i) for i in range(1500)]
  assert plans[:50] == [conversations.plan_pair(text_set, 7, i) for i in range(50)]
  assert [p.text for p in plans[:50]] != [
      conversations.plan_pair(text_set, 8, i).text for i in range(50)]
  by_split = collections.defaultdict(list)
  for p in plans:
    by_split[p.split].append(p)
  assert {s: len(v) > 0 for s, v in by_split.items()} == dict.fromkeys(conversations.SPLITS, True)
  questions = {s: {p.text.question for p in v} for s, v in by_split.items()}
  assert not questions["train"] & questions["validation"]
  assert questions["validation_voices"] <= questions["train"]
  held_out = conversations.HELD_OUT_USER_VOICES
  for p in plans:
    assert (p.question_voice.name in held_out) == (p.split == "validation_voices")
    assert p.emotion in text_set.emotions_for(text_set.by_id[p.text.template_id])
    assert p.answer_voice.name == f"assistant-{p.speaker}"
  # Disjoint over every possible text, not just this sample.
  train_q, validation_q = set(), set()
  for t in text_set.templates:
    target = validation_q if text_set.split_of(t.id) == "validation" else train_q
    target.update(text_set.expand(t, i).question for i in range(text_set.num_expansions(t)))
  assert validation_q and not train_q & validation_q
  assert {t.topic for t in text_set.templates if text_set.split_of(t.id) == "validation"} == set(
      text_set.topics)


# ------------------------------------------------------------------------------------------------
# Synthesis.


def _pcm(folder):
  out = {}
  for path in records.list_shards(folder):
    for data in records.read_records(path):
      arrays, meta = records.decode_record(data)
      out[meta["key"]] = (arrays["question_pcm"], arrays["answer_pcm"], meta)
  return out


def test_restricted_text_sets_speakers_and_emotions(text_set):
  small = text_set.restricted(["greetings", "goodbyes"], fixed_only=True)
  assert {t.topic for t in small.templates} == {"greetings", "goodbyes"}
  assert all(small.num_expansions(t) == 1 for t in small.templates)
  assert all(small.split_of(t.id) == text_set.split_of(t.id) for t in small.templates)
  plans = [conversations.plan_pair(small, 0, i, speakers=["female_young"], emotions=["neutral"])
           for i in range(60)]
  assert {p.speaker for p in plans} == {"female_young"} and {p.emotion for p in plans} == {
      "neutral"}
  assert {p.text.topic for p in plans} == {"greetings", "goodbyes"}
  with pytest.raises(ValueError, match="unknown topics \\['gossip'\\]"):
    text_set.restricted(["gossip"])

def test_tiny_synthesis_run_resumes_and_is_deterministic(engines, text_set, tmp_path):
  # A seed whose first pairs use both engines for questions and answers.
  seed = next(s for s in range(100) if len({
      (p.question_voice.engine, p.answer_voice.engine)
      for p in (conversations.plan_pair(text_set, s, i) for i in range(4))}) >= 3)
  summary = tool.make_conversations(str(tmp_path / "a"), pairs=4, seed=seed, shard_size=2,
                                    progress=False)
  assert summary["total_pairs"] == 4 and not summary["skipped"]
  assert summary["pairs_made_now"] == 4 and summary["pairs_per_second"] > 0
  made = _pcm(tmp_path / "a")
  rows = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").open()]
  assert sorted(r["key"] for r in rows) == sorted(made)
  for question, answer, meta in made.values():
    assert question.dtype == np.int16 and answer.dtype == np.int16
    assert 0.3 < question.size / 16000 < 20 and 0.3 < answer.size / 16000 < 30
    assert meta["speaker_id"] == records.SPEAKER_IDS[meta["speaker"]]
    assert meta["emotion_id"] == records.EMOTION_IDS[meta["emotion"]]
    assert meta["question_engine"] in ("espeak", "festival") and meta["question_text"]
  # Rerun: nothing to do. The CLI with 2 worker processes makes identical audio.
  again = tool.make_conversations(str(tmp_path / "a"), pairs=4, seed=seed, shard_size=2,
                                  progress=False)
  assert again["shards"]["built"] == 0 and again["total_pairs"] == 4
  result = subprocess.run(
      [sys.executable, str(TOOL_PATH), f"--output={tmp_path / 'b'}", "--pairs=4",
       f"--seed={seed}", "--shard_size=2", "--workers=2"],
      capture_output=True, text=True, check=False, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "4 pairs in" in result.stdout and "pairs/s" in result.stdout
  other = _pcm(tmp_path / "b")
  assert sorted(other) == sorted(made)
  for key, (question, answer, _) in made.items():
    np.testing.assert_array_equal(other[key][0], question)
    np.testing.assert_array_equal(other[key][1], answer)


def test_festival_speaks_below_its_lowest_f0(engines):
  # Festival's Telugu voice aborts on an f0 mean of 80 Hz: it is raised to FESTIVAL_MIN_F0.
  low = conversations.Voice("low", "festival", "", 80.0, 9.0, 0.94)
  (wave,) = conversations.synthesize([("శుభోదయం!", low)])
  assert not isinstance(wave, conversations.SynthesisError) and wave.size > 1000


def test_emotion_prosody_changes_the_answer(engines):
  text = "నేను బాగున్నాను, ధన్యవాదాలు."
  waves = {}
  for emotion in ("neutral", "thinking", "excited"):
    prosody = conversations.EMOTION_PROSODY[emotion]
    voice = conversations.ASSISTANT_VOICES["female_young"].scaled(
        rate=prosody.rate, pitch=prosody.pitch, pitch_range=prosody.pitch_range)
    (waves[emotion],) = conversations.synthesize([(text, voice)])
  # Slower speech for thinking, faster for excited.
  assert len(waves["thinking"]) > len(waves["neutral"]) > len(waves["excited"])


# ------------------------------------------------------------------------------------------------
# Imports.


def _tone(seconds, rate, channels=1, freq=220.0):
  t = np.arange(int(seconds * rate)) / rate
  wave = 0.3 * np.sin(2 * np.pi * freq * t)
  return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _write_pairs_folder(root):
  root.mkdir()
  specs = [  # name, question (seconds, rate, channels, ext), answer, metadata
      ("pair_00000", (1.0, 16000, 1, "wav"), (0.8, 16000, 1, "wav"),
       {"speaker_id": 3, "emotion_id": 4, "question_text": "మీరు ఎలా ఉన్నారు?"}),
      ("pair_00001", (0.5, 22050, 2, "wav"), (0.75, 8000, 1, "flac"),
       {"speaker_id": 1, "emotion_id": 6, "split": "validation"}),
      ("pair_00002", (0.5, 16000, 1, "wav"), None, {"speaker_id": 0, "emotion_id": 0}),
      ("pair_00003", (0.5, 16000, 1, "wav"), (0.5, 16000, 1, "wav"),
       {"speaker_id": 0, "emotion_id": "angry"}),
  ]
  for name, question, answer, meta in specs:
    folder = root / name
    folder.mkdir()
    for stem, spec in (("question", question), ("answer", answer)):
      if spec is None:
        (folder / f"{stem}.wav").write_bytes(b"RIFF\x00\x00garbage")
      else:
        seconds, rate, channels, ext = spec
        soundfile.write(folder / f"{stem}.{ext}", _tone(seconds, rate, channels), rate)
    (folder / "metadata.json").write_text(json.dumps(meta, ensure_ascii=False))


def test_from_pairs_imports_the_original_layout(tmp_path):
  _write_pairs_folder(tmp_path / "pairs")
  summary = tool.make_conversations(str(tmp_path / "out"), from_pairs=str(tmp_path / "pairs"),
                                    shard_size=4, progress=False)
  reasons = " ".join(s["reason"] for s in summary["skipped"])
  assert summary["total_pairs"] == 2 and len(summary["skipped"]) == 2
  assert "pair_00002" in reasons and "answer.wav" in reasons and "unknown emotion" in reasons
  made = _pcm(tmp_path / "out")
  question, answer, meta = made["pair_00000"]
  assert question.size == 16000 and answer.size == 12800
  assert (meta["speaker"], meta["emotion"]) == ("female_professional", "empathy")
  assert meta["split"] == shards.split_for_key("pair_00000", 0.1)  # no split given: hashed
  assert meta["question_text"] == "మీరు ఎలా ఉన్నారు?" and meta["source"] == "from_pairs"
  question, answer, meta = made["pair_00001"]  # stereo 22.05 kHz and 8 kHz FLAC, resampled
  assert abs(question.size - 8000) <= 2 and abs(answer.size - 12000) <= 2
  assert (meta["speaker_id"], meta["emotion_id"], meta["split"]) == (1, 6, "validation")


def test_from_manifest_csv_and_jsonl(tmp_path):
  clips = tmp_path / "clips"
  clips.mkdir()
  for name, seconds in (("q1", 1.0), ("a1", 2.0), ("q2", 0.5), ("a2", 0.5)):
    soundfile.write(clips / f"{name}.wav", _tone(seconds, 16000), 16000)
  (tmp_path / "pairs.csv").write_text(
      "question,answer,speaker,emotion,split\n"
      "clips/q1.wav,clips/a1.wav,female_young,happy,train\n"
      "clips/q2.wav,clips/a2.wav,1,7,validation_voices\n"
      "clips/q3.wav,clips/a2.wav,,,\n"
      "clips/q2.wav,clips/a1.wav,nobody,,\n", encoding="utf-8")
  summary = tool.make_conversations(str(tmp_path / "out"),
                                    from_manifest=str(tmp_path / "pairs.csv"), progress=False)
  assert summary["total_pairs"] == 2 and summary["pairs"]["validation_voices"] == 1
  reasons = [s["reason"] for s in summary["skipped"]]
  assert any("q3.wav" in r and "file not found" in r for r in reasons)
  assert any("pairs.csv:5" in r and "unknown speaker 'nobody'" in r for r in reasons)
  made = _pcm(tmp_path / "out")
  question, answer, meta = made["clips/q1.wav"]
  assert question.size == 16000 and answer.size == 32000
  assert (meta["speaker_id"], meta["emotion_id"]) == (2, 1)
  assert made["clips/q2.wav"][2]["emotion"] == "telugu_heavy"
  (tmp_path / "pairs.jsonl").write_text(json.dumps(
      {"question": str(clips / "q1.wav"), "answer": "clips/a2.wav", "emotion": "surprise",
       "answer_text": "సరే!"}, ensure_ascii=False) + "\n", encoding="utf-8")
  summary = tool.make_conversations(str(tmp_path / "out2"),
                                    from_manifest=str(tmp_path / "pairs.jsonl"), progress=False)
  (question, answer, meta), = _pcm(tmp_path / "out2").values()
  assert summary["total_pairs"] == 1 and meta["emotion_id"] == 5 and meta["answer_text"] == "సరే!"


# ------------------------------------------------------------------------------------------------
# Codes.


@pytest.fixture(scope="module")
def smoke_codec(tmp_path_factory):
  """A `configs/codec.py:smoke` codec saved as `load_codec` reads it.

  Random positive values of the right shapes stand in for trained ones: eager `init` takes a
  minute on a busy 2-core machine, and any finite weights encode audio into valid codes.
  """
  config = codec_configs.get_config("smoke")
  shapes = jax.eval_shape(
      lambda: Codec(**config.codec).init(jax.random.key(0), jnp.zeros((1, 4000))))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: rng.uniform(0.5, 1.0, s.shape).astype(s.dtype), shapes)
  path = str(tmp_path_factory.mktemp("codec") / "ckpt")
  checkpoints.save(path, 0, {"gen": variables}, {"task": "codec", "codec": config.codec.to_dict()})
  return path


def test_codec_pair_shards_feed_the_s2s_pair_iterator(smoke_codec, tmp_path):
  _write_pairs_folder(tmp_path / "pairs")
  out = tmp_path / "out"
  summary = tool.make_conversations(str(out), from_pairs=str(tmp_path / "pairs"),
                                    codec=smoke_codec, progress=False)
  codes = summary["codes"]
  assert codes["records"] == 2 and codes["built"] == codes["shards"] >= 1
  code_shards = records.list_shards(out / "codes")
  metas = [records.decode_record(d)[1] for p in code_shards for d in records.read_records(p)]
  assert sorted(m["key"] for m in metas) == ["pair_00000", "pair_00001"]
  assert all(m["kind"] == "pair" for m in metas)
  it = pipelines.s2s_pair_iterator(code_shards, batch_size=2, max_question_frames=64,
                                   max_answer_frames=64, seed=0, process_index=0,
                                   process_count=1)
  batch = next(it)
  n_q = codes["num_quantizers"]
  assert batch["question"].shape == (2, n_q, 64) and batch["answer"].shape == (2, n_q, 64)
  assert sorted(batch["speaker"].tolist()) == [1, 3] and sorted(batch["emotion"].tolist()) == [4, 6]
  assert batch["question_lengths"].min() > 0 and batch["answer_lengths"].min() > 0
  again = tool.make_conversations(str(out), from_pairs=str(tmp_path / "pairs"),
                                  codec=smoke_codec, progress=False)
  assert again["codes"]["built"] == 0 and again["codes"]["records"] == 2
