"""S2S transformer training: `train_and_evaluate(config, workdir)` and its pure update.

The training state is an explicit pytree:

    {"params": model params, "batch_stats": BatchNorm statistics, "opt": optimizer state,
     "step": int32 number of (micro-)batches trained}

Every stage trains on question -> answer pairs of code sequences: stage 1 ("pretrain") makes
them by cutting utterances at a random point (`pipelines.UtteranceSplit`), stages 2 and 3 read
pair shards. The answer is teacher-forced under the model variant's convention
(`models.s2s.teacher_forcing`: start frame, delay pattern, end-of-speech) and scored with the
masked cross-entropy of `losses.py`.

Sections, top to bottom: model, optimizer and state; the update (`make_train_step`); data;
evaluation; the training loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from telugu_jax import checkpoints, losses
from telugu_jax.data import pipelines, records, sample_corpus, transcripts
from telugu_jax.models.s2s import S2SConfig, S2STransformer, teacher_forcing
from telugu_jax.train import loop, sharding

State = dict[str, Any]
COMPUTE_DTYPES = ("float32", "bfloat16")
CODEC_INFO = "codec.json"  # written beside code shards by tools/encode_corpus.py


def model_config(config: ml_collections.ConfigDict) -> S2SConfig:
  return S2SConfig.from_dict(config.model.to_dict())


def _dummy_batch(c: S2SConfig) -> dict[str, jax.Array]:
  codes = jnp.zeros((1, c.num_quantizers, 4), jnp.int32)
  return {"question": codes, "question_lengths": jnp.full((1,), 4, jnp.int32), "answer": codes,
          "answer_lengths": jnp.full((1,), 4, jnp.int32), "speaker": jnp.zeros(1, jnp.int32),
          "emotion": jnp.zeros(1, jnp.int32)}


def unreached_by_loss(config: ml_collections.ConfigDict, params: dict) -> set[str]:
  """Top-level parameter groups that the training loss never reads.

  The original variant's decoder never reads the encoder's output (defect 2), so, without a
  question CTC head, no gradient reaches the encoder: PyTorch leaves those gradients None and
  its AdamW skips the parameters, where optax's would still apply weight decay to them.
  """
  if config.model.variant != "original" or config.model.question_ctc_vocab:
    return set()
  return {name for name in params if name.startswith("encoder_")}


def trainable_labels(config: ml_collections.ConfigDict, params: dict) -> dict:
  """"train" or "frozen" for each top-level parameter group (`config.trainable`; groups the
  loss never reads, `unreached_by_loss`, are frozen)."""
  unreached = unreached_by_loss(config, params)
  if config.trainable.parts == "all":
    return {name: "frozen" if name in unreached else "train" for name in params}
  if config.trainable.parts != "style":
    raise ValueError(f"trainable.parts must be 'all' or 'style', got {config.trainable.parts!r}")
  layers = config.model.num_decoder_layers
  last = {f"decoder_layers_{i}"
          for i in range(max(0, layers - config.trainable.last_decoder_layers), layers)}
  return {name: "train" if (name == "style_embed" or name in last) and name not in unreached
          else "frozen" for name in params}


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to the peak, then cosine decay to `final_fraction` of it, over updates."""
  o = config.optimizer
  updates = max(1, config.total_steps // o.accumulate_steps)
  warmup = min(o.warmup_steps, updates - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=warmup,
      decay_steps=max(updates, warmup + 1), end_value=o.learning_rate * o.final_fraction)


def make_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """Global-norm clipping, AdamW on the schedule, the trainable mask, gradient accumulation."""
  o = config.optimizer
  tx = optax.chain(
      optax.clip_by_global_norm(o.clip_norm),
      optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                  weight_decay=o.weight_decay))
  labels = trainable_labels(config, params)
  if "frozen" in labels.values():
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if o.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.accumulate_steps)
  return tx


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, Any]:
  c = model_config(config)
  b = _dummy_batch(c)
  return S2STransformer(c).init(rng, b["question"], b["answer"], b["speaker"], b["emotion"],
                                with_question_ctc=bool(c.question_ctc_vocab))


def init_state(config: ml_collections.ConfigDict, rng: jax.Array) -> State:
  """A fresh state (flax's default initialisation)."""

  @jax.jit
  def init(rng):
    variables = init_variables(config, rng)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt": make_optimizer(config, variables["params"]).init(variables["params"]),
            "step": jnp.zeros((), jnp.int32)}

  return init(rng)


def abstract_state(config: ml_collections.ConfigDict) -> State:
  return jax.eval_shape(lambda: init_state(config, jax.random.key(0)))


def load_variables(path: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The parameters and BatchNorm statistics of an S2S checkpoint (a training workdir of any
  stage, or a converted original checkpoint) for `config.model`.

  The question CTC head (training only) may be on one side only: a head the checkpoint lacks
  starts from flax's default initialisation (seed `config.seed`), one that `config.model` lacks
  is not read.

  Raises:
    ValueError: another task, or a model configuration that differs from `config.model` in
      anything but dropout and the question CTC head (naming the differing keys).
  """
  root, meta = checkpoints.read_model_meta(path, "s2s")
  saved = S2SConfig.from_dict({**meta["model"], "variant": meta["variant"]}).to_dict()
  wanted = model_config(config).to_dict()
  differing = sorted(k for k in wanted if k != "dropout" and saved.get(k) != wanted[k]
                     and not (k == "question_ctc_vocab" and not (saved[k] and wanted[k])))
  if differing:
    raise ValueError(f"{path}: its S2S model differs from config.model in "
                     + ", ".join(f"{k} ({saved.get(k)} vs {wanted[k]})" for k in differing))
  abstract = jax.eval_shape(lambda: init_variables(config, jax.random.key(0)))
  params = dict(abstract["params"])
  new_head = params.pop("question_ctc_head") if wanted["question_ctc_vocab"] and not saved[
      "question_ctc_vocab"] else None
  variables = checkpoints.restore_subtree(root, {"params": params,
                                                 "batch_stats": abstract["batch_stats"]})
  if new_head is not None:
    fresh = jax.jit(lambda rng: init_variables(config, rng))(jax.random.key(config.seed))
    variables["params"] = {**variables["params"],
                           "question_ctc_head": fresh["params"]["question_ctc_head"]}
  return variables


# --- the update -----------------------------------------------------------------------------------


def corrupt_codes(rng: jax.Array, codes: jax.Array, fraction: float, vocab_size: int,
                  blank_fraction: float = 0.0) -> jax.Array:
  """`codes` `[B, Q, L]` with each code (ids below `vocab_size`; start, end and padding ids stay)
  replaced by a uniformly random code with probability `fraction`, and every code of an example
  with probability `blank_fraction`."""
  if fraction <= 0.0 and blank_fraction <= 0.0:
    return codes
  replace_rng, value_rng = jax.random.split(rng)
  replace = jax.random.uniform(replace_rng, codes.shape) < fraction
  if blank_fraction > 0.0:
    blank = jax.random.uniform(jax.random.fold_in(rng, 1), codes.shape[:1]) < blank_fraction
    replace = replace | blank[:, None, None]
  replace = replace & (codes < vocab_size)
  return jnp.where(replace, jax.random.randint(value_rng, codes.shape, 0, vocab_size,
                                               codes.dtype), codes)


def _decoder_only(model: S2STransformer, input_codes: jax.Array, decoder_input: jax.Array,
                  speaker: jax.Array, emotion: jax.Array, deterministic: bool = True,
                  with_question_ctc: bool = False) -> jax.Array:
  """`S2STransformer.__call__` of the original variant without its encoder, which the decoder
  never reads (defect 2). Every module draws its dropout masks from its own path, so the
  decoder's masks are those of the whole model."""
  del input_codes, with_question_ctc
  style = model.style(speaker, emotion, deterministic)
  return model.decode(decoder_input, style, None, None, deterministic)


def _forward(model: S2STransformer, variables: dict, batch: dict, compute_dtype: str,
             deterministic: bool, rng: jax.Array | None = None, input_noise: float = 0.0,
             input_blank: float = 0.0, skip_unread_encoder: bool = False):
  """Teacher-forced logits (with a question CTC head, `(logits, ctc_logits)`) and the batch's
  `TeacherForcing`; with `deterministic=False` also the updated BatchNorm statistics, and
  `input_noise` of the decoder's input codes and all of them in `input_blank` of the examples
  replaced by random ones (`corrupt_codes`; the targets stay). `skip_unread_encoder` (original
  variant): the encoder is not run, and its BatchNorm statistics come back unchanged."""
  c = model.config
  forcing = teacher_forcing(c, batch["answer"], batch["answer_lengths"])
  if compute_dtype == "bfloat16":
    variables = {**variables, "params": jax.tree.map(lambda p: p.astype(jnp.bfloat16),
                                                     variables["params"])}
  decoder_input = forcing.decoder_input
  if not deterministic and (input_noise > 0 or input_blank > 0):
    rng, noise_rng = jax.random.split(rng)  # (the dropout stream is unchanged without noise)
    decoder_input = corrupt_codes(noise_rng, decoder_input, input_noise, c.vocab_size,
                                  input_blank)
  args = (batch["question"], decoder_input, batch["speaker"], batch["emotion"])
  with_ctc = bool(c.question_ctc_vocab)
  if deterministic:
    return model.apply(variables, *args, with_question_ctc=with_ctc), forcing, None
  logits, updates = model.apply(variables, *args, deterministic=False,
                                with_question_ctc=with_ctc, rngs={"dropout": rng},
                                mutable=["batch_stats"],
                                method=_decoder_only if skip_unread_encoder else None)
  return logits, forcing, updates["batch_stats"]


def question_ctc(c: S2SConfig, outputs, batch: dict) -> tuple[jax.Array, jax.Array, dict]:
  """`(logits, ctc_loss, ctc_sums)` of the model's outputs: without a question CTC head
  (`c.question_ctc_vocab` 0) the loss is 0 and the sums are empty."""
  if not c.question_ctc_vocab:
    return outputs, jnp.zeros((), jnp.float32), {}
  logits, ctc_logits = outputs
  lengths = batch["question_text_lengths"]
  if "valid" in batch:
    lengths = jnp.where(batch["valid"], lengths, 0)
  loss, sums = losses.transcript_ctc(ctc_logits, batch["question_lengths"],
                                     batch["question_text"], lengths)
  return logits, loss, sums


def _level_weights(config: ml_collections.ConfigDict) -> tuple[float, ...] | None:
  weights = tuple(config.loss.level_weights)
  if weights and len(weights) != config.model.num_quantizers:
    raise ValueError(f"loss.level_weights needs {config.model.num_quantizers} entries "
                     f"(one per level), got {len(weights)}")
  return weights or None


def answer_start_emphasis(config: ml_collections.ConfigDict, length: int) -> jax.Array | None:
  """Loss weight `[L]` of each decoder position: `loss.answer_start_weight` for the first
  `loss.answer_start_frames`, 1 after them; None when off (the original's uniform mean)."""
  frames, weight = config.loss.answer_start_frames, config.loss.answer_start_weight
  if frames <= 0 or weight == 1.0:
    return None
  if weight <= 0:
    raise ValueError(f"loss.answer_start_weight must be positive, got {weight}")
  return jnp.where(jnp.arange(length) < frames, weight, 1.0).astype(jnp.float32)


def end_of_speech_hits(c: S2SConfig, logits: jax.Array, forcing) -> dict[str, jax.Array]:
  """Level 0 at the end-of-speech targets: how many there are and how many are predicted
  (`eos_count`, `eos_correct`), and how often end-of-speech is predicted where speech goes on
  (`eos_early`, out of `speech_count`). Zero for the original variant (no end token)."""
  if c.eos_id is None:
    zero = jnp.zeros((), jnp.float32)
    return {"eos_count": zero, "eos_correct": zero, "eos_early": zero, "speech_count": zero}
  predicted = jnp.argmax(logits[:, 0], axis=-1) == c.eos_id
  target = (forcing.targets[:, 0] == c.eos_id) & (forcing.weights[:, 0] > 0)
  speech = (forcing.targets[:, 0] != c.eos_id) & (forcing.weights[:, 0] > 0)
  f32 = lambda x: jnp.sum(x.astype(jnp.float32))
  return {"eos_count": f32(target), "eos_correct": f32(target & predicted),
          "eos_early": f32(speech & predicted), "speech_count": f32(speech)}


def make_train_step(config: ml_collections.ConfigDict, params: Any
                    ) -> Callable[[State, dict], tuple[State, dict]]:
  """Returns `train_step(state, batch) -> (state, metrics)`: one AdamW update (or, with
  accumulation, one micro-batch of it) of the masked cross-entropy, dropout on.

  `params` (or their shapes) give the trainable mask's structure. The batch holds `question`
  `[B, Q, S]`, `answer` `[B, Q, T]`, `answer_lengths`, `speaker` and `emotion` `[B]`.
  """
  c = model_config(config)
  model = S2STransformer(c)
  tx = make_optimizer(config, params)
  schedule = learning_rate_schedule(config)
  level_weights = _level_weights(config)
  frozen_statistics = config.trainable.parts != "all"
  base_rng = jax.random.key(config.seed)
  skip_unread_encoder = config.get("skip_unread_encoder", False)
  if skip_unread_encoder and not c.is_original:
    raise ValueError("skip_unread_encoder is for the original variant, whose decoder never "
                     f"reads the encoder; config.model.variant is {c.variant!r}")

  def train_step(state: State, batch: dict) -> tuple[State, dict]:
    rng = jax.random.fold_in(base_rng, state["step"])

    def loss_fn(params):
      outputs, forcing, batch_stats = _forward(
          model, {"params": params, "batch_stats": state["batch_stats"]}, batch,
          config.compute_dtype, deterministic=False, rng=rng,
          input_noise=config.decoder_input_noise, input_blank=config.decoder_input_blank,
          skip_unread_encoder=skip_unread_encoder)
      logits, ctc_loss, _ = question_ctc(c, outputs, batch)
      loss, sums = losses.masked_cross_entropy(
          logits, forcing.targets, forcing.weights, config.loss.label_smoothing, level_weights,
          answer_start_emphasis(config, forcing.targets.shape[-1]))
      total = loss + config.loss.question_ctc_weight * ctc_loss
      return total, (loss, ctc_loss, sums, end_of_speech_hits(c, logits, forcing), batch_stats)

    (_, (loss, ctc_loss, sums, eos, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates),
                 "batch_stats": state["batch_stats"] if frozen_statistics else batch_stats,
                 "opt": opt, "step": state["step"] + 1}
    accuracy = sums["correct"] / jnp.maximum(sums["count"], 1.0)
    metrics = {"loss": loss, "accuracy": jnp.mean(accuracy),
               "perplexity": jnp.exp(jnp.sum(sums["nll"]) / jnp.maximum(jnp.sum(sums["count"]), 1)),
               "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state["step"] // config.optimizer.accumulate_steps),
               **{f"accuracy_{q}": accuracy[q] for q in range(c.num_quantizers)}}
    if c.eos_id is not None:
      metrics["eos_accuracy"] = eos["eos_correct"] / jnp.maximum(eos["eos_count"], 1.0)
    if c.question_ctc_vocab:
      metrics["question_ctc"] = ctc_loss
    return new_state, metrics

  return train_step


# --- data -----------------------------------------------------------------------------------------


def _transform(config: ml_collections.ConfigDict, stage_data: str
               ) -> pipelines.UtteranceSplit | pipelines.PairFit:
  c, d = model_config(config), config.data
  if stage_data == "utterances":
    return pipelines.UtteranceSplit(d.max_question_frames, d.max_answer_frames,
                                    d.min_question_frames, c.num_quantizers, c.pad_id,
                                    c.vocab_size)
  return pipelines.PairFit(d.max_question_frames, d.max_answer_frames, c.num_quantizers,
                           c.pad_id, c.vocab_size, text_tokens(config))


def text_tokens(config: ml_collections.ConfigDict) -> int:
  """Transcript characters per pair example: `data.max_text_tokens` with a question CTC head,
  else 0 (no transcripts read)."""
  return config.data.max_text_tokens if config.model.question_ctc_vocab else 0


def check_question_ctc(config: ml_collections.ConfigDict) -> None:
  """The question CTC loss needs the head, transcripts (pair shards) and room for them."""
  c, weight = model_config(config), config.loss.question_ctc_weight
  if weight < 0:
    raise ValueError(f"loss.question_ctc_weight must be >= 0, got {weight}")
  if weight > 0 and not c.question_ctc_vocab:
    raise ValueError("loss.question_ctc_weight > 0 needs the model's question CTC head: set "
                     f"model.question_ctc_vocab={transcripts.VOCAB_SIZE}")
  if c.question_ctc_vocab:
    if c.question_ctc_vocab != transcripts.VOCAB_SIZE:
      raise ValueError(f"model.question_ctc_vocab must be {transcripts.VOCAB_SIZE} (the "
                       f"transcript characters of data/transcripts.py), got {c.question_ctc_vocab}")
    if data_kind(config) != "pairs" or config.data.max_text_tokens <= 0:
      raise ValueError("the question CTC head reads the questions' transcripts of pair shards: "
                       "it needs a pair stage and data.max_text_tokens > 0")


def data_kind(config: ml_collections.ConfigDict) -> str:
  """"utterances" (code shards) for stage 1, "pairs" (pair shards) for stages 2 and 3."""
  return "utterances" if config.stage == "pretrain" else "pairs"


def check_shards(paths: list[str], config: ml_collections.ConfigDict) -> None:
  """Checks, before any training step, that shards hold what the stage and model need.

  Reads `codec.json` beside the shards when present (levels and vocabulary of the codec that
  made them) and the first record of every shard: its kind (codes or question/answer pairs),
  its number of levels and its code range.

  Raises:
    ValueError: naming the file and the problem.
  """
  c = model_config(config)
  kind = data_kind(config)
  arrays_needed = ("codes",) if kind == "utterances" else ("question", "answer")
  for directory in sorted({os.path.dirname(p) for p in paths}):
    info_path = os.path.join(directory, CODEC_INFO)
    if os.path.exists(info_path):
      with open(info_path) as f:
        info = json.load(f)
      for key, wanted in (("num_quantizers", c.num_quantizers), ("codebook_size", c.vocab_size)):
        if key in info and info[key] != wanted:
          raise ValueError(f"{info_path}: the codes have {key} {info[key]}, but the model "
                           f"expects {wanted} (config.model: num_quantizers / vocab_size)")
  for path in paths:
    try:
      first = records.read_first_records(path, 1)
      if not first:
        raise ValueError(f"{path}: the shard holds no records")
      arrays, _ = records.decode_record(first[0])
    except (records.CorruptRecordError, RuntimeError) as e:  # RuntimeError: a damaged chunk
      logging.warning("%s: first record unreadable (%s); checked at training time instead",
                      path, e)
      continue
    missing = [name for name in arrays_needed if name not in arrays]
    if missing:
      what = "code shards (tools/encode_corpus.py)" if kind == "utterances" else (
          "question/answer pair shards (tools/make_conversations.py --codec)")
      raise ValueError(f"{path}: its records lack {missing} (holds {sorted(arrays)}); stage "
                       f"{config.stage!r} reads {what}")
    for name in arrays_needed:
      codes = arrays[name]
      if codes.ndim != 2 or codes.shape[0] != c.num_quantizers:
        raise ValueError(f"{path}: {name!r} codes are {codes.shape}, expected "
                         f"[{c.num_quantizers} levels, frames] (config.model.num_quantizers)")
      if codes.size and (codes.min() < 0 or codes.max() >= c.vocab_size):
        raise ValueError(f"{path}: {name!r} holds codes in [{codes.min()}, {codes.max()}], "
                         f"outside the model's vocabulary [0, {c.vocab_size})")


def resolve_shards(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """`(train, validation)` shard paths; for stage 1 with none configured, the bundled sample
  corpus's codes (encoded once with `sample_corpus.sample_code_shards`)."""
  if not config.data.train_shards:
    if data_kind(config) != "utterances":
      raise ValueError(f"stage {config.stage!r} needs pair shards: set "
                       "--config.data.train_shards (and validation_shards)")
    shards = sample_corpus.sample_code_shards(config.codec_checkpoint or None)
    return shards["train"], shards["validation"]
  train = loop.expand_shards(config.data.train_shards)
  validation = (loop.expand_shards(config.data.validation_shards)
                if config.data.validation_shards else [])
  return train, validation


def bucket_width(longest: int, bucket: int, limit: int) -> int:
  """The smallest multiple of `bucket` that holds `longest` frames, at most `limit`."""
  return min(limit, max(bucket, -(-longest // bucket) * bucket))


def trim_batch(batch: dict[str, np.ndarray], config: ml_collections.ConfigDict
               ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Cuts a host batch to the bucket widths of its longest question and answer (the longest
  over all processes), and counts real and padded frames."""
  d = config.data
  longest = np.array([batch["question_lengths"].max(), batch["answer_lengths"].max()])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    longest = np.asarray(multihost_utils.process_allgather(longest)).reshape(-1, 2).max(0)
  q_width = bucket_width(int(longest[0]), d.bucket_frames, d.max_question_frames)
  a_width = bucket_width(int(longest[1]), d.bucket_frames, d.max_answer_frames)
  trimmed = {"question": batch["question"][..., :q_width],
             "question_lengths": batch["question_lengths"],
             "answer": batch["answer"][..., :a_width], "answer_lengths": batch["answer_lengths"],
             "speaker": batch["speaker"], "emotion": batch["emotion"]}
  for key in ("question_text", "question_text_lengths"):
    if key in batch:
      trimmed[key] = batch[key]
  rows = batch["question"].shape[0]
  stats = {"frames": float(batch["question_lengths"].sum() + batch["answer_lengths"].sum()),
           "padded_frames": float(rows * (q_width + a_width))}
  return trimmed, stats


# --- evaluation -----------------------------------------------------------------------------------


def make_eval_step(config: ml_collections.ConfigDict) -> Callable[[dict, dict], dict]:
  """`eval_step(variables, batch)` → per-level sums (`nll`, `correct`, `count` `[Q]`) and the
  end-of-speech counts of the batch's valid rows (dropout off, BatchNorm running statistics)."""
  c = model_config(config)
  model = S2STransformer(c)

  def eval_step(variables: dict, batch: dict) -> dict[str, jax.Array]:
    outputs, forcing, _ = _forward(model, variables, batch, config.compute_dtype,
                                   deterministic=True)
    logits, _, ctc_sums = question_ctc(c, outputs, batch)
    weights = forcing.weights * batch["valid"][:, None, None]
    forcing = forcing._replace(weights=weights)
    _, sums = losses.masked_cross_entropy(logits, forcing.targets, weights)
    return {**sums, **end_of_speech_hits(c, logits, forcing),
            **{f"ctc_{k}": v for k, v in ctc_sums.items()}}

  return eval_step


def summarize(sums: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
  """Loss, top-1 accuracy and perplexity per level (and over levels), end-of-speech accuracy."""
  count = np.maximum(sums["count"], 1.0)
  nll, accuracy = sums["nll"] / count, sums["correct"] / count
  results = {f"{prefix}loss": float(np.mean(nll)), f"{prefix}accuracy": float(np.mean(accuracy)),
             f"{prefix}perplexity": float(np.exp(np.mean(nll)))}
  for q in range(len(nll)):
    results[f"{prefix}accuracy_{q}"] = float(accuracy[q])
    results[f"{prefix}perplexity_{q}"] = float(np.exp(nll[q]))
  if sums.get("ctc_characters", 0) > 0:
    results[f"{prefix}question_ctc"] = float(sums["ctc_nll"] / sums["ctc_characters"])
  if sums["eos_count"] > 0:
    results[f"{prefix}eos_accuracy"] = float(sums["eos_correct"] / sums["eos_count"])
    results[f"{prefix}eos_early_rate"] = float(sums["eos_early"] / max(sums["speech_count"], 1))
  return results


class Evaluator:
  """Validation loss, accuracy, perplexity and end-of-speech accuracy on held-out shards; with
  `config.codec_checkpoint`, a few answers generated and decoded to audio."""

  def __init__(self, config, mesh, validation_shards, workdir, writer):
    self.config, self.mesh, self.workdir, self.writer = config, mesh, workdir, writer
    self.validation_shards = validation_shards
    self.local_batch = sharding.local_batch_size(config.data.batch_size)
    self.transform = _transform(config, data_kind(config))
    batch = sharding.batch_sharded(mesh)
    self._step = jax.jit(make_eval_step(config),
                         in_shardings=(sharding.replicated(mesh), batch),
                         out_shardings=sharding.replicated(mesh))
    self.samples = None
    if config.codec_checkpoint and config.eval_samples > 0 and validation_shards:
      from telugu_jax.evaluation import s2s_samples  # Loads the codec: only when asked for.
      self.samples = s2s_samples.SampleWriter(config.codec_checkpoint, model_config(config),
                                              os.path.join(workdir, "samples"), writer)

  def __call__(self, state: State, step: int) -> dict[str, float]:
    if not self.validation_shards:
      return {}
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    totals, examples = None, []
    batches = pipelines.s2s_eval_batches(self.validation_shards, self.transform,
                                         batch_size=self.local_batch)
    for i, batch in enumerate(batches):
      if self.config.eval_batches and i >= self.config.eval_batches:
        break
      trimmed, _ = trim_batch(batch, self.config)
      trimmed["valid"] = batch["valid"]
      sums = jax.device_get(self._step(variables, sharding.global_batch(self.mesh, trimmed)))
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
      if len(examples) < self.config.eval_samples:
        examples += [{k: v[row] for k, v in batch.items()}
                     for row in np.flatnonzero(batch["valid"])][:self.config.eval_samples]
    results = summarize(totals, "val/") if totals is not None else {}
    if self.samples is not None and jax.process_index() == 0:
      self.samples.write(variables, examples[:self.config.eval_samples], step,
                         self.config.sample_max_frames)
    return results


# --- the training loop ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains one S2S stage, resuming from `workdir` or `config.init_from`. Returns the final
  validation metrics."""
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype {config.compute_dtype!r} is not supported: use one of "
                     f"{COMPUTE_DTYPES}")
  c = model_config(config)
  _level_weights(config)
  check_question_ctc(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  is_main = jax.process_index() == 0

  # Data.
  train_shards, validation_shards = resolve_shards(config)
  check_shards(train_shards + validation_shards, config)
  local_batch = sharding.local_batch_size(config.data.batch_size)
  d = config.data
  common = dict(batch_size=local_batch, max_question_frames=d.max_question_frames,
                max_answer_frames=d.max_answer_frames, num_quantizers=c.num_quantizers,
                vocab_size=c.vocab_size, pad_value=c.pad_id, seed=config.seed,
                num_workers=d.num_workers, length_window=d.length_window)
  if data_kind(config) == "utterances":
    train_iter = pipelines.s2s_split_iterator(train_shards, **common,
                                              min_question_frames=d.min_question_frames)
  else:
    train_iter = pipelines.s2s_pair_iterator(train_shards, **common,
                                             max_text_tokens=text_tokens(config))

  # State: the workdir's checkpoint, else config.init_from, else fresh.
  checkpoint_manager = checkpoints.TrainingCheckpoints(
      os.path.join(workdir, checkpoints.WORKDIR_CHECKPOINTS), keep=config.keep_checkpoints)
  replicated = sharding.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract_state(config))
  meta = checkpoints.model_meta("s2s", variant=c.variant, model=c.to_dict())
  meta.update(stage=config.stage, config=config.to_json())

  def load_init(path):
    variables = load_variables(path, config)
    state = {**variables, "opt": make_optimizer(config, variables["params"]).init(
        variables["params"]), "step": jnp.zeros((), jnp.int32)}
    return jax.device_put(state, replicated), {}

  restored = loop.restore_or_initialize(
      checkpoint_manager, abstract, train_iter, meta, config.init_from, load_init,
      lambda: jax.device_put(init_state(config, jax.random.key(config.seed)), replicated))
  first_step = int(restored.state["step"])

  train_step = jax.jit(make_train_step(config, abstract["params"]),
                       in_shardings=(replicated, sharding.batch_sharded(mesh)),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  log = loop.MetricsLog(workdir, restored.checkpoint_step or 0)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  evaluator = Evaluator(config, mesh, validation_shards, workdir, log.writer)
  print(f"training S2S stage {config.stage!r} ({c.variant} model, "
        f"{sum(x.size for x in jax.tree.leaves(abstract['params'])):,} parameters) for "
        f"{config.total_steps} steps from step {first_step} on {jax.device_count()} devices, "
        f"{jax.process_count()} processes; global batch {config.data.batch_size} × (up to "
        f"{d.max_question_frames} + {d.max_answer_frames} frames)", flush=True)

  def next_batch():
    batch, stats = trim_batch(next(train_iter), config)
    return sharding.global_batch(mesh, batch), stats

  def evaluate(state, step):
    results = evaluator(state, step)
    if is_main and results:
      shown = ("val/loss", "val/accuracy", "val/perplexity", "val/eos_accuracy",
               "val/question_ctc")
      print(f"eval step {step}: " + " ".join(f"{k} {results[k]:.4g}" for k in shown
                                             if k in results), flush=True)
    return results

  spec = loop.LoopSpec(
      train_step=train_step,
      next_batch=next_batch,
      evaluate=evaluate,
      loss_keys=("loss", "question_ctc") if c.question_ctc_vocab else ("loss",),
      progress_keys=("loss", "accuracy", "perplexity", "eos_accuracy", "question_ctc",
                     "learning_rate"),
      throughput=("frames", "frames/s"),
      best_of=lambda results: -results["val/loss"] if "val/loss" in results else None,
      derived=lambda window: {
          "padding_fraction": 1.0 - window["frames"] / max(window["padded_frames"], 1.0)})
  try:
    _, results = loop.run(spec, config, restored.state, first_step, config.total_steps,
                          checkpoint_manager, restored.checkpoint_step, meta, train_iter, log)
  finally:
    log.close()
  return results
