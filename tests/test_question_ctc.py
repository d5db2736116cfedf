"""The auxiliary CTC on question transcripts: the character vocabulary, the loss against
PyTorch's, transcripts in pair batches, and a head that learns to read the question."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_train_s2s import VOCAB, pair_config

from telugu_jax import checkpoints, losses
from telugu_jax.data import pipelines, records, transcripts
from telugu_jax.models.s2s import S2STransformer
from telugu_jax.train import s2s as trainer


def test_transcripts_keep_telugu_letters_and_word_boundaries():
  text = "సరే, వచ్చే వారం కలుద్దాం!  డాక్టర్\u200cని 5 OK."
  ids = transcripts.encode(text)
  assert transcripts.decode(ids) == "సరే వచ్చే వారం కలుద్దాం డాక్టర్ని"
  assert ids[0] == 2 + ord("స") - 0x0C00 and min(ids) >= 1 and max(ids) < transcripts.VOCAB_SIZE
  assert transcripts.encode(" ,. ") == [] and transcripts.encode("") == []
  # "అక్క": a, ka, virama, ka (no equal neighbours); "అమ్మ" likewise; "ాా" has one pair.
  assert transcripts.ctc_frames_needed(transcripts.encode("అక్క")) == 4
  assert transcripts.ctc_frames_needed(transcripts.encode("కాా")) == 4

  ids_out, length = transcripts.fit("కాా", 6, frames=4)
  np.testing.assert_array_equal(ids_out, transcripts.encode("కాా") + [0, 0, 0])
  assert length == 3
  assert transcripts.fit("కాా", 6, frames=3)[1] == 0  # cannot align in 3 frames
  assert transcripts.fit("కాకా", 3, frames=10)[1] == 0  # longer than max_tokens
  assert transcripts.fit(None, 3, frames=10)[1] == 0


def test_transcript_ctc_against_pytorch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 9, 6)).astype(np.float32)
  frame_lengths = np.array([9, 6, 7])
  labels = rng.integers(1, 6, (3, 4))
  label_lengths = np.array([4, 2, 0])  # the last row has no transcript and is left out
  loss, sums = losses.transcript_ctc(jnp.asarray(logits), jnp.asarray(frame_lengths),
                                     jnp.asarray(labels), jnp.asarray(label_lengths))
  log_probs = torch.log_softmax(torch.from_numpy(logits), -1).transpose(0, 1)  # [T, B, C]
  expected = torch.nn.functional.ctc_loss(
      log_probs[:, :2], torch.from_numpy(labels[:2]), torch.from_numpy(frame_lengths[:2]),
      torch.from_numpy(label_lengths[:2]), blank=0, reduction="sum").item()
  assert float(sums["nll"]) == pytest.approx(expected, rel=1e-5)
  assert float(sums["characters"]) == 6 and float(loss) == pytest.approx(expected / 6, rel=1e-5)

  # One frame, one label: -log p(label).
  one, _ = losses.transcript_ctc(jnp.asarray(logits[:1, :1]), jnp.array([1]),
                                 jnp.array([[3]]), jnp.array([1]))
  assert float(one) == pytest.approx(-float(jnp.log(jnp.exp(logits[0, 0, 3])
                                                     / jnp.exp(logits[0, 0]).sum())), rel=1e-5)


def test_pair_batches_carry_the_question_transcripts(tmp_path):
  texts = ["నమస్కారం!", "మీరు ఎలా ఉన్నారు?", "సరే"]
  frames = [9, 20, 3]  # the second question is truncated (max 12 frames): no transcript
  pairs = [{"question": np.full((2, n), i), "answer": np.full((2, 4), i), "question_text": text}
           for i, (text, n) in enumerate(zip(texts, frames))]
  shards = records.write_code_shards(pairs, tmp_path / "pairs", split="train")
  batch = next(pipelines.s2s_pair_iterator(shards, batch_size=3, max_question_frames=12,
                                           max_answer_frames=4, seed=0, max_text_tokens=16,
                                           process_index=0, process_count=1))
  for row in range(3):
    i = int(batch["question"][row, 0, 0])
    length = int(batch["question_text_lengths"][row])
    if i == 1:
      assert length == 0
    else:
      assert length == len(transcripts.encode(texts[i])) > 0
      assert transcripts.decode(batch["question_text"][row, :length]) == texts[i].strip("!")
  plain = next(pipelines.s2s_pair_iterator(shards, batch_size=3, max_question_frames=12,
                                           max_answer_frames=4, seed=0,
                                           process_index=0, process_count=1))
  assert "question_text" not in plain


LETTERS = "కగచజటడ"


def spelled_pairs(count, seed):
  """Questions that spell a 2-4 letter transcript, 2 frames a letter, on level 0 (letter j is
  code j), with random codes on level 1 (the "voice"); the answer is the question reversed."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(count):
    letters = rng.integers(0, len(LETTERS), int(rng.integers(2, 5)))
    level0 = np.repeat(letters, 2)
    question = np.stack([level0, rng.integers(0, VOCAB, level0.size)])
    pairs.append({"question": question, "answer": question[:, ::-1],
                  "question_text": "".join(LETTERS[j] for j in letters)})
  return pairs


def test_question_ctc_head_learns_to_read_the_question(tmp_path):
  """Trained with the auxiliary CTC, the head on the encoder output transcribes held-out
  questions (greedy CTC decoding), and the validation CTC loss is reported."""
  data = str(tmp_path / "data")
  train = records.write_code_shards(spelled_pairs(2000, 0), data, split="train")
  held_out = spelled_pairs(32, 1)
  validation = records.write_code_shards(held_out, data, split="validation")
  config = pair_config(train[0], validation[0], total_steps=100, log_every=50, eval_every=100,
                       checkpoint_every=100, **{
                           "optimizer.warmup_steps": 20,
                           "model.question_ctc_vocab": transcripts.VOCAB_SIZE,
                           "loss.question_ctc_weight": 1.0, "data.max_text_tokens": 8})
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["val/question_ctc"] < 0.1, results

  variables = trainer.load_variables(str(tmp_path / "run"), config)
  c = trainer.model_config(config)
  questions = np.full((len(held_out), 2, 8), c.pad_id, np.int32)
  for row, pair in enumerate(held_out):
    questions[row, :, :pair["question"].shape[1]] = pair["question"]
  zeros = np.zeros(len(held_out), np.int32)
  _, ctc_logits = S2STransformer(c).apply(variables, questions, questions, zeros, zeros,
                                          with_question_ctc=True)
  for row, pair in enumerate(held_out):
    best = np.asarray(ctc_logits[row, :pair["question"].shape[1]]).argmax(-1)
    collapsed = [int(k) for j, k in enumerate(best) if k and (j == 0 or k != best[j - 1])]
    assert transcripts.decode(collapsed) == pair["question_text"], row

  # Stages chain with or without the head: dropped when the next stage has none ...
  plain_config = pair_config(train[0], validation[0])
  plain = trainer.load_variables(str(tmp_path / "run"), plain_config)
  assert set(plain["params"]) == set(variables["params"]) - {"question_ctc_head"}
  np.testing.assert_array_equal(plain["params"]["decoder_norm"]["scale"],
                                variables["params"]["decoder_norm"]["scale"])
  # ... and freshly initialised when the previous stage had none.
  plain_model = trainer.model_config(plain_config)
  checkpoints.save(str(tmp_path / "plain"), 0, plain, checkpoints.model_meta(
      "s2s", variant=plain_model.variant, model=plain_model.to_dict()))
  with_head = trainer.load_variables(str(tmp_path / "plain"), config)
  fresh = jax.jit(lambda rng: trainer.init_variables(config, rng))(jax.random.key(config.seed))
  np.testing.assert_array_equal(with_head["params"]["question_ctc_head"]["kernel"],
                                fresh["params"]["question_ctc_head"]["kernel"])

  with pytest.raises(ValueError, match="question_ctc_vocab"):
    trainer.check_question_ctc(pair_config(train[0], validation[0],
                                           **{"loss.question_ctc_weight": 1.0}))
