"""TFDS builders, built offline from tiny archives in each corpus's real layout (no TensorFlow).

Each test writes a miniature copy of the corpus as distributed (same archive names, folder
layout, index/transcript formats), builds the dataset with `file_format="array_record"`, reads
it back through `tfds.data_source`, and checks every example against what was written: audio
resampled to 16 kHz int16, transcript, speaker, gender, and the split assignment. One corrupt
recording per corpus must be skipped without failing the build.
"""

import csv
import io
import shutil
import subprocess
import tarfile
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import tensorflow_datasets as tfds

from telugu_jax.data import pipelines
from telugu_jax.data import shards
from telugu_jax.data import tfds_builders
from telugu_jax.data.tfds_builders import base

CORRUPT = b"RIFF\x00\x00\x00\x00WAVEnot really audio"


def tone(seconds: float, rate: int, seed: int) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  return (0.2 * np.sin(2 * np.pi * (200 + 37 * seed) * t)).astype(np.float32)


def encoded(seconds: float, rate: int, seed: int, fmt: str = "WAV") -> bytes:
  buffer = io.BytesIO()
  soundfile.write(buffer, tone(seconds, rate, seed), rate, format=fmt)
  return buffer.getvalue()


def expected_len(seconds: float, rate: int) -> int:
  return int(round(int(seconds * rate) * 16000 / rate))


def build(builder_cls, tmp_path, manual_dir):
  builder = builder_cls(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  sources = builder.as_data_source()
  out = {}
  for split, source in sources.items():
    out[split] = {}
    for i in range(len(source)):
      ex = source[i]
      out[split][ex["id"].decode()] = ex
  return out


def check(example, *, length, transcript, speaker="", gender=""):
  assert example["audio"].dtype == np.int16
  assert abs(example["audio"].shape[0] - length) <= 1
  assert example["transcript"].decode() == transcript
  assert example["speaker"].decode() == speaker
  assert example["gender"].decode() == gender
  assert example["duration"] == pytest.approx(example["audio"].shape[0] / 16000)


def ids_in_both_splits(make_id, count):
  """`count` ids: `make_id(0..count-2)` plus the next id that hashes to validation."""
  ids = [make_id(i) for i in range(count - 1)]
  i = count - 1
  while shards.split_for_key(make_id(i), base.VALIDATION_FRACTION) != "validation":
    i += 1
  return ids + [make_id(i)]


def write_zip(path, members):
  with zipfile.ZipFile(path, "w") as z:
    for name, data in members.items():
      z.writestr(name, data)


def write_tar(path, members, mode="w"):
  with tarfile.open(path, mode) as t:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))


def test_registered_builders_need_no_tensorflow():
  names = {b.name for b in tfds_builders.BUILDERS}
  assert names == {
      "openslr66_te", "mucs_te", "kathbath_te", "indicvoices_te", "common_voice_te", "indictts_te"
  }  # fmt: skip
  for builder in tfds_builders.BUILDERS:
    assert tfds.builder_cls(builder.name) is builder
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel


def test_openslr66(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  expected = {}
  for gender, prefix, n in (("female", "tef", 4), ("male", "tem", 3)):
    members, lines = {}, []
    file_ids = ids_in_both_splits(lambda j: f"{prefix}_0{j % 2}123_{j:011d}", n)
    for i, file_id in enumerate(file_ids):
      text = f"తెలుగు వాక్యం {gender} {i}"
      lines.append(f"{file_id}\t{text}")
      members[f"{file_id}.wav"] = encoded(0.3 + 0.1 * i, 48000, i)
      expected[file_id] = (expected_len(0.3 + 0.1 * i, 48000), text, file_id[:9], gender)
    lines.append(f"{prefix}_09999_0000000000\tపాడైన ఫైల్")  # listed, but its wav is corrupt
    members[f"{prefix}_09999_0000000000.wav"] = CORRUPT
    members["line_index.tsv"] = ("\n".join(lines) + "\n").encode()
    write_zip(manual / f"te_in_{gender}.zip", members)

  data = build(tfds_builders.Openslr66Te, tmp_path, manual)
  assert set(data) == {"train", "validation"}
  seen = {}
  for split, examples in data.items():
    for key, ex in examples.items():
      assert shards.split_for_key(key, base.VALIDATION_FRACTION) == split
      seen[key] = ex
  assert set(seen) == set(expected)  # every good file once; the corrupt ones skipped
  for key, (length, text, speaker, gender) in expected.items():
    check(seen[key], length=length, transcript=text, speaker=speaker, gender=gender)

  # The prepared dataset feeds the codec pipeline directly, without TensorFlow.
  source = tfds.data_source("openslr66_te", data_dir=str(tmp_path / "tfds"))["train"]
  it = pipelines.codec_train_iterator(
      source, batch_size=2, crop_samples=4000, process_index=0, process_count=1
  )
  batch = next(it)
  assert batch["audio"].shape == (2, 4000)
  rms = np.sqrt(np.mean(batch["audio"][0].astype(np.float64) ** 2))
  assert rms == pytest.approx(0.158, rel=1e-3)


def test_mucs(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  train_members = {}
  lines = []
  train_ids = ids_in_both_splits(lambda j: f"00010{j:04d}", 5)
  for i, utt in enumerate(train_ids):
    lines.append(f"{utt} రైలు {i}")
    train_members[f"te-in-Train/Audios/{utt}.wav"] = encoded(0.25, 16000, i)
  lines.append("000109999 పాడైనది")
  train_members["te-in-Train/Audios/000109999.wav"] = CORRUPT
  train_members["te-in-Train/transcription.txt"] = ("\n".join(lines) + "\n").encode()
  write_zip(manual / "te-in-Train.zip", train_members)
  test_dir = manual / "te-in-Test"
  (test_dir / "Audios").mkdir(parents=True)
  (test_dir / "transcription.txt").write_text("000200001\tపరీక్ష ఒకటి\n", encoding="utf-8")
  (test_dir / "Audios" / "000200001.wav").write_bytes(encoded(0.5, 8000, 9))

  data = build(tfds_builders.MucsTe, tmp_path, manual)
  for split in ("train", "validation"):
    assert set(data[split]) == {
        u for u in train_ids if shards.split_for_key(u, base.VALIDATION_FRACTION) == split
    }
  for i, utt in enumerate(train_ids):
    split = shards.split_for_key(utt, base.VALIDATION_FRACTION)
    check(data[split][utt], length=4000, transcript=f"రైలు {i}")
  assert set(data["test"]) == {"000200001"}
  check(data["test"]["000200001"], length=8000, transcript="పరీక్ష ఒకటి")


def test_kathbath(tmp_path):
  """Kathbath ships AAC in `.m4a`, which needs ffmpeg. Without ffmpeg the members hold FLAC
  data under the same names (libsndfile detects formats by content), so the layout handling is
  still tested; with ffmpeg they are real AAC."""
  have_ffmpeg = shutil.which("ffmpeg") is not None

  def m4a(seconds, seed):
    if not have_ffmpeg:
      return encoded(seconds, 16000, seed, "FLAC")
    src, dst = tmp_path / "x.wav", tmp_path / "x.m4a"
    src.write_bytes(encoded(seconds, 16000, seed))
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", src, dst], check=True)
    return dst.read_bytes()

  manual = tmp_path / "manual"
  manual.mkdir()
  root = "kb_data_clean_m4a"
  transcripts = {}
  audio_tars = {}
  expected = {}
  for tar_name, split_dir, split, n in (
      ("train_audio.tar", "train", "train", 3),
      ("valid_audio.tar", "valid", "validation", 1),
      ("testkn_audio.tar", "test_known", "test_known", 1),
      ("testunk_audio.tar", "test_unknown", "test_unknown", 1),
  ):
    members, lines = {}, []
    for i in range(n):
      stem = f"84442493{i}{len(split)}-{100 + i}-{'mf'[i % 2]}"
      lines.append(f"{stem}.m4a\tకథ {split} {i}")
      members[f"{root}/telugu/{split_dir}/{stem}.m4a"] = m4a(0.2 + 0.1 * i, i)
      expected[(split, stem)] = (expected_len(0.2 + 0.1 * i, 16000), f"కథ {split} {i}",
                                 f"kathbath_{100 + i}", ("male", "female")[i % 2])  # fmt: skip
    if split == "train":
      lines.append("99-7-f.m4a\tపాడైనది")
      members[f"{root}/telugu/{split_dir}/99-7-f.m4a"] = CORRUPT
      members[f"{root}/hindi/{split_dir}/55-1-m.m4a"] = m4a(0.2, 5)  # other languages: ignored
      transcripts[f"{root}/hindi/{split_dir}/transcription_n2w.txt"] = b"55-1-m.m4a\tnamaste\n"
    transcript = ("\n".join(lines) + "\n").encode()
    transcripts[f"{root}/telugu/{split_dir}/transcription_n2w.txt"] = transcript
    audio_tars[tar_name] = members
  write_tar(manual / "transcripts_n2w.tar", transcripts)
  for tar_name, members in audio_tars.items():
    write_tar(manual / tar_name, members)

  data = build(tfds_builders.KathbathTe, tmp_path, manual)
  assert set(data) == {"train", "validation", "test_known", "test_unknown"}
  got = {(split, key) for split, examples in data.items() for key in examples}
  assert got == set(expected)
  for (split, stem), (length, text, speaker, gender) in expected.items():
    tolerance = 1100 if have_ffmpeg else 1  # AAC adds encoder priming/padding
    ex = data[split][stem]
    assert abs(ex["audio"].shape[0] - length) <= tolerance
    assert ex["transcript"].decode() == text
    assert ex["speaker"].decode() == speaker and ex["gender"].decode() == gender


def test_indicvoices(tmp_path):
  manual = tmp_path / "manual" / "telugu"
  manual.mkdir(parents=True)
  audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  expected = {}
  for file_name, split, n in (
      ("train-00000-of-00001.parquet", "train", 3),
      ("valid-00000-of-00001.parquet", "validation", 2),
  ):
    cells, texts, speakers, genders = [], [], [], []
    for i in range(n):
      cells.append({"bytes": encoded(0.3, 44100, i, "FLAC"), "path": f"{i}.flac"})
      texts.append(f"మాట {split} {i}")
      speakers.append(f"S{i}")
      genders.append("Female" if i % 2 else "Male")
      key = f"{file_name[:-len('.parquet')]}/{i}"
      expected[(split, key)] = (expected_len(0.3, 44100), texts[-1], speakers[-1], genders[-1].lower())
    if split == "train":
      cells.append({"bytes": CORRUPT, "path": "bad.wav"})
      texts.append("పాడైనది")
      speakers.append("S9")
      genders.append("Male")
    table = pa.table(
        {
            "audio_filepath": pa.array(cells, audio_type),
            "text": texts,
            "duration": [0.3] * len(texts),
            "speaker_id": speakers,
            "gender": genders,
            "scenario": ["Read"] * len(texts),
        }
    )
    pq.write_table(table, manual / file_name)

  data = build(tfds_builders.IndicvoicesTe, tmp_path, manual)
  got = {(split, key) for split, examples in data.items() for key in examples}
  assert got == set(expected)
  for (split, key), (length, text, speaker, gender) in expected.items():
    check(data[split][key], length=length, transcript=text, speaker=speaker, gender=gender)


def test_common_voice(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  prefix = "cv-corpus-21.0-2025-03-14/te"
  members = {}
  expected = {}
  header = ["client_id", "path", "sentence_id", "sentence", "up_votes", "down_votes", "age",
            "gender", "accents", "variant", "locale", "segment"]  # fmt: skip
  clip = 0
  for tsv, split, n in (("train.tsv", "train", 3), ("dev.tsv", "validation", 1),
                        ("test.tsv", "test", 1), ("other.tsv", None, 2)):  # fmt: skip
    rows = io.StringIO()
    writer = csv.writer(rows, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    for i in range(n):
      clip += 1
      name = f"common_voice_te_{clip}.mp3"
      members[f"{prefix}/clips/{name}"] = encoded(0.6, 32000, clip, "MP3")
      writer.writerow([f"client{i}", name, "s", f"వాక్యం {clip}", 2, 0, "", "male_masculine", "", "", "te", ""])
      if split is not None:
        expected[(split, name[:-4])] = (f"వాక్యం {clip}", f"client{i}")
    if split == "train":
      members[f"{prefix}/clips/broken.mp3"] = b"ID3\x04\x00garbage"
      writer.writerow(["clientX", "broken.mp3", "s", "పాడైనది", 2, 0, "", "", "", "", "te", ""])
    members[f"{prefix}/{tsv}"] = rows.getvalue().encode()
  write_tar(manual / "cv-corpus-21.0-2025-03-14-te.tar.gz", members, mode="w:gz")

  data = build(tfds_builders.CommonVoiceTe, tmp_path, manual)
  got = {(split, key) for split, examples in data.items() for key in examples}
  assert got == set(expected)  # other.tsv not read, the broken clip skipped
  for (split, key), (text, speaker) in expected.items():
    ex = data[split][key]
    # MP3 adds encoder delay and padding; the length is right to within a frame.
    assert abs(ex["audio"].shape[0] - 9600) < 1200
    assert ex["transcript"].decode() == text and ex["speaker"].decode() == speaker
    assert ex["gender"].decode() == "male_masculine"


def test_indictts(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  members = {}
  expected = {}
  for gender in ("male", "female"):
    lines = []
    for i, utt in enumerate(ids_in_both_splits(lambda j: f"train_telugu{gender}_{j:05d}", 4)):
      lines.append(f'( {utt} " తెలుగు {gender} {i} " )')
      members[f"Telugu/{gender}/mono/wav/{utt}.wav"] = encoded(0.25, 48000, i)
      text = f"తెలుగు {gender} {i}"
      expected[utt] = (expected_len(0.25, 48000), text, f"indictts_te_{gender}", gender)
    lines.append(f'( train_telugu{gender}_09999 " పాడైనది " )')
    members[f"Telugu/{gender}/mono/wav/train_telugu{gender}_09999.wav"] = CORRUPT
    members[f"Telugu/{gender}/mono/txt.done.data"] = ("\n".join(lines) + "\n").encode()
  write_zip(manual / "Telugu.zip", members)

  data = build(tfds_builders.IndicttsTe, tmp_path, manual)
  seen = {}
  for split, examples in data.items():
    for key, ex in examples.items():
      assert shards.split_for_key(key, base.VALIDATION_FRACTION) == split
      seen[key] = ex
  assert set(seen) == set(expected)
  for key, (length, text, speaker, gender) in expected.items():
    check(seen[key], length=length, transcript=text, speaker=speaker, gender=gender)
