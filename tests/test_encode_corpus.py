"""tools/encode_corpus.py: audio shards -> code shards, on a tiny codec."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_tool

from configs import codec as codec_configs
from telugu_jax import checkpoints
from telugu_jax.data import audio
from telugu_jax.data import records
from telugu_jax.inference import codec as inference_codec
from telugu_jax.models import codec as codec_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "encode_corpus.py"
encode_corpus = load_tool("encode_corpus")


def _pcm(length, seed):
  rng = np.random.default_rng(seed)
  envelope = 0.5 + 0.5 * np.sin(np.linspace(0, 3 * np.pi, length)) ** 2
  wave = 0.2 * envelope * np.sin(np.cumsum(rng.uniform(0.02, 0.2, length))) + 0.02 * rng.normal(
      size=length)
  return audio.float_to_pcm16(wave)


def _audio_record(pcm, **meta):
  return records.encode_record({"pcm": pcm}, {"kind": "audio", "sample_rate": 16000, **meta})


# (shard name, [(length, speaker, emotion)]). With --batch_seconds=1.5 and
# --buckets_per_octave=1 the tool runs batches of 3 x 8000, 1 x 16000 and 1 x 32000 samples
# (few compilations), rows of different lengths together, and moves leftovers to wider batches.
LAYOUT = (
    ("train-00000-of-00003.arrayrecord",
     [(3000, "female_young", "happy"), (7000, " Male_Mature ", ""), (12000, "robot", "sad"),
      (20000, None, "laugh")]),
    ("train-00001-of-00003.arrayrecord",
     [(5000, "female_professional", "thinking"), (9000, "male_young", "neutral"),
      (4100, "robot", "neutral")]),
    ("validation-00000-of-00001.arrayrecord",
     [(16000, "female_young", "telugu_mild"), (6500, "male_young", "excited")]),
)
NUM_UTTERANCES = sum(len(items) for _, items in LAYOUT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A smoke-size codec checkpoint and three audio shards, one with bad records."""
  root = tmp_path_factory.mktemp("corpus")
  kwargs = codec_configs.get_config("smoke").codec.to_dict()
  # Random weights of the right shapes (no compilation: initialising compiles the whole codec).
  abstract = jax.eval_shape(
      lambda: codec_lib.Codec(**kwargs).init(jax.random.key(0), jnp.zeros((1, 4000))))
  rng = np.random.default_rng(0)

  def init(path, x):  # Unit gains, zero biases, random directions and codebooks: varied codes.
    name = jax.tree_util.keystr(path[-1:])
    if any(n in name for n in ("weight_g", "alpha", "scale")):
      return np.ones(x.shape, x.dtype)
    if "bias" in name:
      return np.zeros(x.shape, x.dtype)
    return rng.normal(size=x.shape).astype(x.dtype)

  variables = jax.tree_util.tree_map_with_path(init, abstract)
  checkpoint = str(root / "codec")
  checkpoints.save(checkpoint, 7, {"gen": variables}, {"task": "codec", "codec": kwargs})
  shard_dir = root / "shards"
  expected = {}
  for s, (name, items) in enumerate(LAYOUT):
    with records.ShardWriter(shard_dir / name) as writer:
      for i, (length, speaker, emotion) in enumerate(items):
        meta = {"key": f"{name}/{i}", "emotion": emotion, "transcript": f"వాక్యం {s}.{i}",
                "split": name.split("-")[0], "source": "test", "duration": length / 16000}
        if speaker is not None:
          meta["speaker"] = speaker
        pcm = _pcm(length, seed=100 * s + i)
        writer.write(_audio_record(pcm, **meta))
        expected[meta["key"]] = (pcm, meta)
        if name.startswith("train-00001") and i == 0:
          corrupt = bytearray(_audio_record(_pcm(4000, 9), key="bad"))
          corrupt[-100:-90] = bytes(b ^ 0xFF for b in corrupt[-100:-90])
          writer.write(bytes(corrupt))  # record 1: checksum mismatch
          writer.write(records.code_record(np.zeros((2, 5), np.int16)))  # record 2: not audio
  return {"checkpoint": checkpoint, "shards": str(shard_dir), "kwargs": kwargs,
          "expected": expected, "root": root}


def _args(corpus, output, *extra):
  return [f"--checkpoint={corpus['checkpoint']}", f"--input={corpus['shards']}/train-*,"
          f"{corpus['shards']}/validation-*", f"--output={output}", "--batch_seconds=1.5",
          "--buckets_per_octave=1", "--no_progress", *extra]


def _read_output(output):
  out = {}
  for path in records.list_shards(output):
    for data in records.read_records(path):
      arrays, meta = records.decode_record(data)
      out[meta["key"]] = (arrays["codes"], meta, os.path.basename(path))
  return out


@pytest.fixture(scope="module")
def encoded(corpus):
  """One run of the tool as a command (a subprocess)."""
  output = corpus["root"] / "codes"
  result = subprocess.run([sys.executable, str(TOOL), *_args(corpus, output)],
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  return output, result.stdout


def test_codes_equal_encoding_each_utterance_alone(corpus, encoded):
  output, stdout = encoded
  codec = inference_codec.load_codec(corpus["checkpoint"])
  out = _read_output(output)
  assert sorted(out) == sorted(corpus["expected"])
  used = set()
  for key, (pcm, _) in corpus["expected"].items():
    codes, meta, _ = out[key]
    alone = codec.encode(audio.normalize_rms(audio.pcm16_to_float(pcm))[None])[0]
    assert codes.shape == (codec.num_quantizers, codec_lib.num_frames(pcm.size))
    np.testing.assert_array_equal(codes, alone)
    assert meta["num_samples"] == pcm.size
    used.update(np.unique(codes).tolist())
  assert len(used) > codec.codebook_size // 2  # many codes in use: a real comparison
  assert "audio-seconds/s" in stdout and "frames/s" in stdout


def test_metadata_kept_and_style_ids_mapped(corpus, encoded):
  output, _ = encoded
  out = _read_output(output)
  for name, items in LAYOUT:
    for i, (_, speaker, emotion) in enumerate(items):
      key = f"{name}/{i}"
      _, meta, shard = out[key]
      source = corpus["expected"][key][1]
      assert shard == name  # same base name as the input shard
      for field in ("key", "emotion", "transcript", "split", "source"):
        assert meta[field] == source[field]
      assert meta["speaker"] == source.get("speaker", "")
      assert meta["kind"] == "codes"
      known_speaker = (speaker or "").strip().lower()
      assert meta["speaker_id"] == records.SPEAKER_IDS.get(known_speaker, 0)
      assert meta["emotion_id"] == records.EMOTION_IDS.get(emotion, 0)
  assert out["train-00000-of-00003.arrayrecord/1"][1]["speaker_id"] == 1  # " Male_Mature "
  summary = json.loads((output / "summary.json").read_text())
  assert summary["unknown_speakers"] == {"robot": 2, "<missing>": 1}
  assert summary["unknown_emotions"] == {"sad": 1, "<missing>": 1}


def test_corrupt_and_non_audio_records_skipped_and_listed(corpus, encoded):
  output, stdout = encoded
  summary = json.loads((output / "summary.json").read_text())
  skipped = summary["skipped_records"]
  shard = os.path.join(corpus["shards"], "train-00001-of-00003.arrayrecord")
  assert [(s["shard"], s["index"]) for s in skipped] == [(shard, 1), (shard, 2)]
  assert "checksum" in skipped[0]["reason"]
  assert "not an audio record" in skipped[1]["reason"]
  assert "skipped records: 2" in stdout
  assert summary["records"] == NUM_UTTERANCES
  assert summary["shards"] == {"assigned": 3, "encoded": 3, "already_done": 0, "unreadable": 0}
  seconds = sum(pcm.size for pcm, _ in corpus["expected"].values()) / 16000
  assert summary["audio_hours"] == pytest.approx(seconds / 3600)
  assert summary["frames"] == sum(
      codec_lib.num_frames(pcm.size) for pcm, _ in corpus["expected"].values())
  assert summary["this_run"]["audio_seconds_per_second"] > 0


def test_codec_json(corpus, encoded):
  output, _ = encoded
  info = json.loads((output / "codec.json").read_text())
  kwargs = corpus["kwargs"]
  assert info["num_quantizers"] == kwargs["num_quantizers"]
  assert info["codebook_size"] == kwargs["codebook_size"]
  assert info["sample_rate"] == 16000
  assert info["hop"] == 80 and info["frame_rate"] == 200.0
  assert info["checkpoint"] == corpus["checkpoint"] and info["step"] == 7
  assert info["config"] == {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def test_rerun_skips_finished_shards_and_removes_stale_files(corpus, encoded, capsys):
  output, _ = encoded
  redo = output / "train-00001-of-00003.arrayrecord"
  before = redo.read_bytes()
  redo.unlink()
  stale = output / "train-00000-of-00003.arrayrecord.tmp-12345"
  stale.write_bytes(b"partial")
  finished = output / "validation-00000-of-00001.arrayrecord"
  mtime = finished.stat().st_mtime_ns
  assert encode_corpus.main(_args(corpus, output)) == 0
  assert not stale.exists()
  assert finished.stat().st_mtime_ns == mtime
  assert redo.read_bytes() == before
  summary = json.loads((output / "summary.json").read_text())
  assert summary["shards"] == {"assigned": 3, "encoded": 1, "already_done": 2, "unreadable": 0}
  assert summary["records"] == NUM_UTTERANCES and len(summary["skipped_records"]) == 2
  assert summary["this_run"]["records"] == 3
  assert "1 encoded, 2 already done" in capsys.readouterr().out


def test_processes_split_shards_disjointly_and_completely(corpus, encoded, tmp_path):
  output, _ = encoded
  parts = []
  for index in (0, 1):
    assert encode_corpus.main(_args(corpus, tmp_path, f"--process_index={index}",
                                    "--process_count=2")) == 0
    part = json.loads((tmp_path / f"summary-{index}.json").read_text())
    parts.append(part)
    assert (tmp_path / "summary.json").exists() == (index == 1)  # merged by the last one
  assert [p["shards"]["assigned"] for p in parts] == [2, 1]
  merged = json.loads((tmp_path / "summary.json").read_text())
  assert merged["records"] == NUM_UTTERANCES and merged["shards"]["encoded"] == 3
  assert len(merged["skipped_records"]) == 2
  assert sorted(os.listdir(tmp_path)) == sorted(
      [n for n, _ in LAYOUT] + [f"{n}.json" for n, _ in LAYOUT]
      + ["codec.json", "summary-0.json", "summary-1.json", "summary.json"])
  for name, _ in LAYOUT:  # Same codes as the single-process run.
    assert (tmp_path / name).read_bytes() == (output / name).read_bytes()
  paths = [f"s{k}" for k in range(7)]
  shares = [encode_corpus.select_shards(paths, i, 3) for i in range(3)]
  assert sorted(sum(shares, [])) == paths and shares[0] == ["s0", "s3", "s6"]


def test_unreadable_shard_reported_and_skipped(corpus, tmp_path):
  bad = tmp_path / "in" / "train-99999.arrayrecord"
  bad.parent.mkdir()
  bad.write_bytes(b"this is not an array record file" * 10)
  args = _args(corpus, tmp_path / "out")
  args[1] = f"--input={corpus['shards']}/validation-*,{bad}"
  assert encode_corpus.main(args) == 0
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert [s["shard"] for s in summary["unreadable_shards"]] == [str(bad)]
  assert summary["shards"]["encoded"] == 1 and summary["records"] == 2
  assert not (tmp_path / "out" / bad.name).exists()


def test_clear_errors(corpus, tmp_path, capsys):
  args = _args(corpus, tmp_path)
  args[1] = f"--input={corpus['shards']}/train-*,{tmp_path}/nothing-*.arrayrecord"
  assert encode_corpus.main(args) == 1
  err = capsys.readouterr().err
  assert f"{tmp_path}/nothing-*.arrayrecord" in err and len(err.strip().splitlines()) == 1
  args = _args(corpus, tmp_path)
  args[0] = f"--checkpoint={tmp_path}/no_such_checkpoint"
  assert encode_corpus.main(args) == 1
  err = capsys.readouterr().err
  assert "no_such_checkpoint" in err and len(err.strip().splitlines()) == 1


def test_padded_widths():
  assert [encode_corpus.padded_width(n, 2) for n in (1, 16000, 16001, 24001, 40000, 70000)] == [
      4000, 16000, 24000, 32000, 48000, 96000]
  for n in range(1, 100000, 997):
    assert n <= encode_corpus.padded_width(n, 4) <= max(4000, 1.25 * n)
