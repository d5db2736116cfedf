"""Grain pipelines: crops and normalisation, determinism, Orbax save/restore, per-process
sharding, corrupt records, validation batches, S2S code and pair batches."""

import logging

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from telugu_jax.data import audio
from telugu_jax.data import pipelines
from telugu_jax.data import records

NUM_SHARDS, PER_SHARD = 4, 6
CROP = 4000


def tagged_pcm(record_id: int, length: int) -> np.ndarray:
  """Alternating +1000 / -(1000 + 10 id): the ratio min/max survives cropping, zero padding and
  any positive scaling, so `record_id_of` recovers the id from a normalised crop."""
  pcm = np.full(length, 1000, np.int16)
  pcm[1::2] = -(1000 + 10 * record_id)
  return pcm


def record_id_of(crop: np.ndarray) -> int:
  return int(round((-crop.min() / crop.max() - 1.0) * 100))


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory):
  """4 shards x 6 records; lengths from shorter than a crop (zero-padded) to 3 crops."""
  d = tmp_path_factory.mktemp("audio_shards")
  for s in range(NUM_SHARDS):
    with records.ShardWriter(d / f"train-{s:05d}.arrayrecord") as w:
      for i in range(PER_SHARD):
        rid = s * PER_SHARD + i
        pcm = tagged_pcm(rid, [1500, 4000, 7000, 12000][rid % 4])
        w.write(records.encode_record({"pcm": pcm}, {"key": f"r{rid}"}))
  return records.list_shards(d)


def ids_of(batch):
  return [record_id_of(row) for row in batch["audio"]]


def test_crops_are_normalised_and_padded(audio_shards):
  it = pipelines.codec_train_iterator(
      audio_shards, batch_size=8, crop_samples=CROP, seed=0, process_index=0, process_count=1
  )
  batch = next(it)
  assert batch["audio"].shape == (8, CROP) and batch["audio"].dtype == np.float32
  for row in batch["audio"]:
    rms, peak = np.sqrt(np.mean(row.astype(np.float64) ** 2)), np.abs(row).max()
    # The rule: RMS 0.158, unless that pushed the peak over 1, then peak 0.95.
    assert rms == pytest.approx(0.158, rel=1e-4) or peak == pytest.approx(0.95, rel=1e-5)
  short = [row for row in batch["audio"] if row[1500:].max() == 0]  # 1500-sample records
  for row in short:
    assert np.all(row[:1500] != 0)


def test_utterance_normalisation_keeps_each_crops_level(tmp_path):
  """One utterance, loud then 40 dB quieter: "utterance" crops are windows of the normalised
  utterance (the quiet part stays quiet); "crop" crops, drawn at the same starts, are each at
  -16 dBFS."""
  pcm = np.full(12000, 8000, np.int16)
  pcm[1::2] = -8000
  pcm[6000:] //= 100
  with records.ShardWriter(tmp_path / "train-00000.arrayrecord") as w:
    w.write(records.encode_record({"pcm": pcm}, {"key": "loud-then-quiet"}))
  whole = audio.normalize_rms(pcm.astype(np.float32) / 32768.0)
  windows = np.lib.stride_tricks.sliding_window_view(whole, CROP)

  def crops(normalize):
    it = pipelines.codec_train_iterator(
        records.list_shards(tmp_path), batch_size=1, crop_samples=CROP, normalize=normalize,
        seed=3, process_index=0, process_count=1)
    return [next(it)["audio"][0] for _ in range(12)]

  by_utterance, by_crop = crops("utterance"), crops("crop")
  for row, crop_row in zip(by_utterance, by_crop):
    assert np.min(np.max(np.abs(windows - row), axis=1)) < 1e-6  # a window of `whole`
    np.testing.assert_allclose(audio.normalize_rms(row), crop_row, rtol=1e-5, atol=1e-6)
    assert np.sqrt(np.mean(crop_row.astype(np.float64) ** 2)) == pytest.approx(0.158, rel=1e-4)
  levels = [np.sqrt(np.mean(row.astype(np.float64) ** 2)) for row in by_utterance]
  assert max(levels) / min(levels) > 20  # some crops loud, some in the quiet part
  with pytest.raises(ValueError, match="normalize"):
    pipelines.codec_train_iterator(records.list_shards(tmp_path), batch_size=1, normalize="clip")


def test_same_seed_same_batches_and_other_seed_differs(audio_shards):
  def first(seed, n=4):
    it = pipelines.codec_train_iterator(
        audio_shards, batch_size=4, crop_samples=CROP, seed=seed, process_index=0, process_count=1
    )
    return [next(it)["audio"] for _ in range(n)]

  a, b, c = first(1), first(1), first(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_each_epoch_visits_every_record_once_in_a_new_order(audio_shards):
  it = pipelines.codec_train_iterator(
      audio_shards, batch_size=4, crop_samples=CROP, seed=5, process_index=0, process_count=1
  )
  total = NUM_SHARDS * PER_SHARD
  epoch1 = [i for _ in range(total // 4) for i in ids_of(next(it))]
  epoch2 = [i for _ in range(total // 4) for i in ids_of(next(it))]
  assert sorted(epoch1) == sorted(epoch2) == list(range(total))
  assert epoch1 != epoch2


def test_orbax_save_restore_gives_identical_batches(audio_shards, tmp_path):
  kwargs = dict(batch_size=4, crop_samples=CROP, seed=7, process_index=0, process_count=1)
  it = pipelines.codec_train_iterator(audio_shards, **kwargs)
  for _ in range(5):
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it)["audio"] for _ in range(6)]  # crosses into the next epoch

  resumed = pipelines.codec_train_iterator(audio_shards, **kwargs)
  restorer = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
  restorer.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["audio"], want)


def test_two_processes_read_disjoint_records_forming_the_one_process_batches(audio_shards):
  total = NUM_SHARDS * PER_SHARD
  kwargs = dict(crop_samples=CROP, seed=0)
  seen, local = [], []
  for index in range(2):
    it = pipelines.codec_train_iterator(
        audio_shards, batch_size=3, process_index=index, process_count=2, **kwargs
    )
    batches = [next(it) for _ in range(total // 2 // 3)]
    ids = [i for batch in batches for i in ids_of(batch)]
    assert sorted(ids) == sorted(set(ids))  # one epoch of this process: no repeats
    seen.append(set(ids))
    local.append(batches)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(total))
  # The two local batches side by side hold the same crops as one process's batch of 6.
  single = pipelines.codec_train_iterator(
      audio_shards, batch_size=6, process_index=0, process_count=1, **kwargs
  )
  for step in range(total // 6):
    together = np.concatenate([local[0][step]["audio"], local[1][step]["audio"]])
    alone = next(single)["audio"]
    assert sorted(map(bytes, together)) == sorted(map(bytes, alone))
  with pytest.raises(ValueError, match="process_index 2 not in"):
    pipelines.codec_train_iterator(audio_shards, batch_size=1, process_index=2, process_count=2)


def test_corrupt_records_are_skipped_counted_and_logged(tmp_path, caplog):
  path = tmp_path / "train-00000.arrayrecord"
  good = [records.encode_record({"pcm": tagged_pcm(i, 3000)}, {}) for i in range(5)]
  flipped = bytearray(good[2])
  flipped[-10] ^= 0xFF  # payload bit flip: checksum mismatch
  with records.ShardWriter(path) as w:
    for data in (good[0], good[1], bytes(flipped), b"not a record", good[3], good[4]):
      w.write(data)
  it = pipelines.codec_train_iterator(
      [str(path)], batch_size=2, crop_samples=CROP, seed=0, process_index=0, process_count=1
  )
  with caplog.at_level(logging.WARNING):
    ids = [i for _ in range(20) for i in ids_of(next(it))]  # ten epochs of the 4 good records
  assert sorted(ids) == sorted([0, 1, 3, 4] * 10)
  skipped = pipelines.corrupt_records_skipped(it)
  assert 18 <= skipped <= 20  # both bad records in each epoch (the last may not be reached yet)
  warnings = [r.getMessage() for r in caplog.records if "Skipping corrupt record" in r.getMessage()]
  assert len(warnings) == skipped
  assert sum(f"{path} record 2: payload checksum mismatch" in m for m in warnings) >= 9
  assert sum(f"{path} record 3: not a telugu-jax record (bad magic)" in m for m in warnings) >= 9
  state = it.get_state()
  restored = pipelines.codec_train_iterator(
      [str(path)], batch_size=2, crop_samples=CROP, seed=0, process_index=0, process_count=1
  )
  restored.set_state(state)
  assert pipelines.corrupt_records_skipped(restored) == skipped


def test_eval_batches_whole_utterances_and_fixed_crops(audio_shards):
  total = NUM_SHARDS * PER_SHARD
  whole = list(pipelines.codec_eval_batches(
      audio_shards, batch_size=5, pad_multiple=1000, process_index=0, process_count=1))  # fmt: skip
  assert len(whole) == 5  # 24 records in batches of 5
  valid = [(row, n) for b in whole for row, n, v in zip(b["audio"], b["lengths"], b["valid"]) if v]
  assert len(valid) == total
  assert [record_id_of(row[:n]) for row, n in valid] == list(range(total))  # shard order
  for b in whole:
    assert b["audio"].shape[1] % 1000 == 0 and b["audio"].shape[1] >= b["lengths"].max()
    for row, n in zip(b["audio"], b["lengths"]):
      assert not row[n:].any()
      if n:
        assert np.sqrt(np.mean(row[:n].astype(np.float64) ** 2)) == pytest.approx(0.158, rel=1e-4)
  assert not whole[-1]["valid"][4] and whole[-1]["lengths"][4] == 0

  crops = list(pipelines.codec_eval_batches(
      audio_shards, batch_size=8, crop_samples=2000, process_index=0, process_count=1))  # fmt: skip
  again = list(pipelines.codec_eval_batches(
      audio_shards, batch_size=8, crop_samples=2000, process_index=0, process_count=1))  # fmt: skip
  assert [b["audio"].shape for b in crops] == [(8, 2000)] * 3
  for x, y in zip(crops, again):
    np.testing.assert_array_equal(x["audio"], y["audio"])
  np.testing.assert_array_equal(crops[0]["lengths"][:4], [1500, 2000, 2000, 2000])


def test_eval_processes_get_equal_batch_counts(audio_shards):
  # 24 records over 5 processes: blocks of 4 or 5 records -> 3 batches of 2 for everyone.
  counts, seen = [], set()
  for index in range(5):
    batches = list(
        pipelines.codec_eval_batches(
            audio_shards, batch_size=2, crop_samples=1000, process_index=index, process_count=5
        )
    )
    counts.append(len(batches))
    seen |= {record_id_of(r) for b in batches for r, v in zip(b["audio"], b["valid"]) if v}
  assert counts == [3] * 5 and seen == set(range(NUM_SHARDS * PER_SHARD))


@pytest.fixture(scope="module")
def code_shards(tmp_path_factory):
  d = tmp_path_factory.mktemp("codes")
  rng = np.random.default_rng(0)

  def examples():
    for rid in range(12):
      frames = [5, 20, 33][rid % 3]
      codes = rng.integers(1, 1024, (8, frames))
      codes[:, 0] = rid  # identifies the record when the window starts at frame 0
      yield {"codes": codes, "speaker_id": rid % 4, "emotion_id": rid % 9, "key": f"c{rid}"}
    yield {"codes": rng.integers(0, 1024, (4, 10))}  # wrong number of quantizers

  paths = records.write_code_shards(examples(), d, records_per_shard=5)
  pairs = records.write_code_shards(
      (
          {"question": np.full((8, 3 + i), i), "answer": np.full((8, 9 - i), 100 + i),
           "speaker_id": 3, "emotion_id": i}  # fmt: skip
          for i in range(6)
      ),
      d / "pairs",
      split="pairs",
  )
  return paths, pairs


def test_s2s_code_iterator(code_shards, caplog):
  paths, _ = code_shards
  assert len(paths) == 3  # 13 records, 5 per shard
  it = pipelines.s2s_code_iterator(
      paths, batch_size=4, max_frames=16, num_quantizers=8, seed=0, process_index=0, process_count=1
  )
  with caplog.at_level(logging.WARNING):
    batches = [next(it) for _ in range(3)]  # one epoch of the 12 good records
  assert pipelines.corrupt_records_skipped(it) == 1
  assert "'codes' has 4 quantizers, expected 8" in caplog.text
  for b in batches:
    assert b["codes"].shape == (4, 8, 16) and b["codes"].dtype == np.int32
    assert b["mask"].shape == (4, 16) and b["lengths"].dtype == np.int32
    np.testing.assert_array_equal(b["mask"].sum(axis=1), b["lengths"])
    for codes, mask, n in zip(b["codes"], b["mask"], b["lengths"]):
      assert n in (5, 16) and not codes[:, ~mask].any()  # padded with code 0
  short = [(c, s, e) for b in batches for c, n, s, e in
           zip(b["codes"], b["lengths"], b["speaker"], b["emotion"]) if n == 5]  # fmt: skip
  assert len(short) == 4
  for codes, speaker, emotion in short:
    rid = codes[0, 0]
    assert rid % 3 == 0 and speaker == rid % 4 and emotion == rid % 9


def test_s2s_code_windows_are_contiguous_slices(code_shards):
  paths, _ = code_shards
  originals = {}
  for path in paths:
    for data in records.read_records(path):
      arrays, meta = records.decode_record(data)
      if "key" in meta:
        originals[meta["key"]] = arrays["codes"]
  it = pipelines.s2s_code_iterator(
      paths, batch_size=4, max_frames=16, num_quantizers=8, seed=3, process_index=0, process_count=1
  )
  for _ in range(6):
    batch = next(it)
    for codes, n in zip(batch["codes"], batch["lengths"]):
      if n < 16:
        continue
      windows = [o[:, s : s + 16] for o in originals.values() if o.shape[1] > 16
                 for s in range(o.shape[1] - 15)]  # fmt: skip
      assert any(np.array_equal(codes, w) for w in windows)


def test_s2s_pair_iterator(code_shards):
  _, pairs = code_shards
  it = pipelines.s2s_pair_iterator(
      pairs, batch_size=3, max_question_frames=6, max_answer_frames=7, seed=0,
      process_index=0, process_count=1,  # fmt: skip
  )
  rows = []
  for _ in range(2):
    b = next(it)
    assert b["question"].shape == (3, 8, 6) and b["answer"].shape == (3, 8, 7)
    rows += list(zip(b["question"], b["question_lengths"], b["answer"], b["answer_lengths"],
                     b["emotion"], b["speaker"], b["question_mask"], b["answer_mask"]))  # fmt: skip
  assert sorted(int(r[4]) for r in rows) == list(range(6))
  for q, q_len, a, a_len, i, speaker, q_mask, a_mask in rows:
    assert q_len == min(3 + i, 6) and a_len == min(9 - i, 7) and speaker == 3
    assert np.all(q[:, :q_len] == i) and not q[:, q_len:].any()
    assert np.all(a[:, :a_len] == 100 + i) and not a[:, a_len:].any()
    assert q_mask.sum() == q_len and a_mask.sum() == a_len


def test_length_grouped_pair_batches_regroup_each_window_and_restore_exactly(tmp_path):
  rng = np.random.default_rng(0)
  pairs = records.write_code_shards(
      ({"question": np.full((2, int(rng.integers(2, 30))), i),
        "answer": np.full((2, int(rng.integers(2, 30))), i)} for i in range(40)),
      tmp_path / "pairs", split="train", records_per_shard=10)
  kwargs = dict(batch_size=4, max_question_frames=32, max_answer_frames=32, seed=5,
                process_index=0, process_count=1)

  def ids(batch):
    return [int(q[0, 0]) for q in batch["question"]]

  plain = pipelines.s2s_pair_iterator(pairs, **kwargs)
  grouped = pipelines.s2s_pair_iterator(pairs, **kwargs, length_window=3)
  for _ in range(4):  # windows of 3 batches, across the first epoch's end (40 records)
    plain_window = [next(plain) for _ in range(3)]
    window = [next(grouped) for _ in range(3)]
    # The same 12 examples as the plain batches of the window, regrouped by length.
    assert sorted(sum(map(ids, window), [])) == sorted(sum(map(ids, plain_window), []))
    lengths = sorted([b["question_lengths"] + b["answer_lengths"] for b in window],
                     key=lambda x: x.min())
    assert all(a.max() <= b.min() for a, b in zip(lengths, lengths[1:]))
    for batch in window:
      assert batch["question"].shape == (4, 2, 32)
      np.testing.assert_array_equal(batch["question_mask"].sum(1), batch["question_lengths"])

  for consumed in (3, 4):  # at a window's end, and one batch into a window
    it = pipelines.s2s_pair_iterator(pairs, **kwargs, length_window=3)
    for _ in range(consumed):
      next(it)
    manager = ocp.CheckpointManager(tmp_path / f"ckpt{consumed}", item_names=("data",))
    manager.save(consumed, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = [ids(next(it)) for _ in range(7)]
    resumed = pipelines.s2s_pair_iterator(pairs, **kwargs, length_window=3)
    restorer = ocp.CheckpointManager(tmp_path / f"ckpt{consumed}", item_names=("data",))
    restorer.restore(consumed,
                     args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert [ids(next(resumed)) for _ in range(7)] == expected


def test_code_records_reject_bad_input(tmp_path):
  with pytest.raises(ValueError, match=r"expected integer codes \[n_q, frames\]"):
    records.code_record(np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="neither 'codes' nor 'question'/'answer'"):
    records.write_code_shards([{"tokens": np.zeros((2, 2), np.int32)}], tmp_path)
  record = records.code_record(np.arange(6).reshape(2, 3), speaker_id=2)
  arrays, meta = records.decode_record(record)
  np.testing.assert_array_equal(arrays["codes"], np.arange(6).reshape(2, 3))
  assert meta == {"kind": "codes", "speaker_id": 2, "emotion_id": 0}


def test_unreadable_shard_is_left_out(audio_shards, tmp_path, caplog):
  broken = tmp_path / "train-99999.arrayrecord"
  broken.write_bytes(b"\x00" * 100)
  with caplog.at_level(logging.ERROR):
    source = pipelines.RecordSource(list(audio_shards) + [str(broken)])
  assert len(source) == NUM_SHARDS * PER_SHARD
  assert f"Skipping unreadable shard {broken}" in caplog.text


def test_worker_processes_are_deterministic_and_restorable(audio_shards):
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
  kwargs = dict(batch_size=4, crop_samples=CROP, seed=2, num_workers=2, process_index=0,
                process_count=1)  # fmt: skip
  it = pipelines.codec_train_iterator(audio_shards, **kwargs)
  first = [next(it)["audio"] for _ in range(6)]  # one epoch: 24 records
  assert sorted(i for b in first for i in ids_of({"audio": b})) == list(range(24))
  state = it.get_state()
  expected = [next(it)["audio"] for _ in range(3)]
  it.close()
  resumed = pipelines.codec_train_iterator(audio_shards, **kwargs)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["audio"], want)
  resumed.close()
