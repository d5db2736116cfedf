"""Codec GAN training: `train_and_evaluate(config, workdir)` and its pure update.

The training state is an explicit pytree:

    {"gen":  {"params": codec params, "vq": EMA statistics, "opt": AdamW state},
     "disc": {"params": discriminator params, "opt": AdamW state},
     "step": int32 number of GAN updates done}

Sections, top to bottom: models and state; the update (`make_train_step`); evaluation; the
training loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import soundfile
from absl import logging

from telugu_jax import checkpoints, losses, optim
from telugu_jax.data import pipelines, sample_corpus
from telugu_jax.data.audio import bucket_length
from telugu_jax.evaluation import metrics as eval_metrics
from telugu_jax.evaluation import plots, quality
from telugu_jax.models import codec as codec_lib
from telugu_jax.models.codec import Codec
from telugu_jax.models.discriminators import Discriminator
from telugu_jax.train import loop, sharding

State = dict[str, Any]
SAMPLE_RATE = 16000
# Model options that change no parameter: a checkpoint may differ from the config in these.
_FREE_OPTIONS = ("straight_through", "causal")
COMPUTE_DTYPES = ("float32", "bfloat16")


def build_models(config: ml_collections.ConfigDict) -> tuple[Codec, Discriminator]:
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype {config.compute_dtype!r} is not supported: use one of "
                     f"{COMPUTE_DTYPES}")
  if config.codec.get("codebook_dim", 0) and (config.vq.init_from_data
                                             or config.vq.dead_code_threshold > 0):
    raise ValueError("vq.init_from_data and vq.dead_code_threshold re-seed EMA codebooks: they "
                     "need codec.codebook_dim=0 (factorised codes are learned by gradient)")
  if config.vq.get("reseed_count", 1.0) < config.vq.dead_code_threshold:
    raise ValueError(f"vq.reseed_count ({config.vq.reseed_count}) must be at least "
                     f"vq.dead_code_threshold ({config.vq.dead_code_threshold}): a row re-seeded "
                     "below the threshold would be re-seeded again at every step")
  if not 0.0 <= config.vq.get("reseed_split", 0.0) <= 1.0:
    raise ValueError(f"vq.reseed_split must lie in [0, 1], got {config.vq.reseed_split}")
  if not 0 <= config.vq.get("reseed_split_from_level", 0) < config.codec.num_quantizers:
    raise ValueError(f"vq.reseed_split_from_level must name a level in [0, "
                     f"{config.codec.num_quantizers}), got {config.vq.reseed_split_from_level}")
  if not 0.0 <= config.vq.get("quantizer_dropout", 0.0) <= 1.0:
    raise ValueError(f"vq.quantizer_dropout must lie in [0, 1], got {config.vq.quantizer_dropout}")
  return (Codec(**config.codec, dtype=config.compute_dtype),
          Discriminator(**config.discriminator, dtype=config.compute_dtype))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  return optim.make_adamw(o.learning_rate, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm)


def _initializer(config: ml_collections.ConfigDict, num_samples: int
                 ) -> Callable[[jax.Array], State]:
  codec, disc = build_models(config)
  tx = make_optimizer(config)

  def init(rng):
    codec_rng, disc_rng = jax.random.split(rng)
    audio = jnp.zeros((1, num_samples), jnp.float32)
    codec_vars = codec.init(codec_rng, audio)
    disc_params = disc.init(disc_rng, audio)["params"]
    return {
        # Factorised codes have no EMA statistics: "vq" is then empty.
        "gen": {"params": codec_vars["params"], "vq": codec_vars.get("vq", {}),
                "opt": tx.init(codec_vars["params"])},
        "disc": {"params": disc_params, "opt": tx.init(disc_params)},
        "step": jnp.zeros((), jnp.int32),
    }

  return init


def run_once(fn: Callable[..., Any], *args: Any) -> Any:
  """`jax.jit(fn)(*args)` for a program that runs once, such as a codec's initialisation.

  XLA:CPU spends most of such a compilation optimising the inlined random-number generator of
  every initialiser (46 s for the full-size codec and discriminator on 2 cores): on the CPU the
  program is compiled without backend optimisation (13 s, then 4 s to run; values differ from
  the optimised program's in the last bits only).
  """
  if jax.default_backend() != "cpu":
    return jax.jit(fn)(*args)
  compiled = jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return compiled(*args)


def init_state(config: ml_collections.ConfigDict, rng: jax.Array, num_samples: int = 16000) -> State:
  """A fresh state (PyTorch's default initialisation, as the original)."""
  return run_once(_initializer(config, num_samples), rng)


def abstract_state(config: ml_collections.ConfigDict, num_samples: int = 16000) -> State:
  """The state's structure, shapes and dtypes (`jax.ShapeDtypeStruct`s), for restoring."""
  return jax.eval_shape(_initializer(config, num_samples), jax.random.key(0))


def with_codebooks(params: dict, codebooks: jax.Array) -> dict:
  return {**params, "quantizer": {**params["quantizer"], "codebooks": codebooks}}


def load_state(path: str, config: ml_collections.ConfigDict,
               step: int | None = None) -> tuple[State, dict[str, Any]]:
  """Restores a GAN state (a converted PyTorch checkpoint or a training workdir) for `config`.

  Parts the checkpoint lacks (a codec-only conversion has no discriminator and no optimizer
  states) come from a fresh initialisation with `config.seed`.

  Raises:
    ValueError: if the checkpoint's architecture differs from `config`'s.
  """
  root, meta = checkpoints.read_model_meta(path, "codec", step)
  defaults = {"codec": _field_defaults(Codec), "discriminator": _field_defaults(Discriminator)}
  for key in ("codec", "discriminator"):
    if key not in meta:
      continue
    # An option the checkpoint (written before it existed) or the config lacks counts as its
    # default, the original's.
    saved = {k: tuple(v) if isinstance(v, list) else v
             for k, v in {**defaults[key], **meta[key]}.items()
             if k not in _FREE_OPTIONS and (k in config[key] or v != defaults[key].get(k))}
    wanted = {k: v for k, v in config[key].to_dict().items() if k not in _FREE_OPTIONS}
    if saved != wanted:
      raise ValueError(f"{path}: the checkpoint's {key} {saved} differs from the config's {wanted}")
  abstract = abstract_state(config)
  wanted = {"gen": {"params": abstract["gen"]["params"], "vq": abstract["gen"]["vq"]}}
  if "gen_optimizer" in meta:
    wanted["gen"]["opt"] = abstract["gen"]["opt"]
  if "discriminator" in meta:
    wanted["disc"] = {"params": abstract["disc"]["params"]}
    if "disc_optimizer" in meta:
      wanted["disc"]["opt"] = abstract["disc"]["opt"]
  wanted["step"] = abstract["step"]
  restored = checkpoints.restore_subtree(root, wanted, step)
  if restored["gen"].keys() == abstract["gen"].keys() and "opt" in restored.get("disc", {}):
    return restored, meta
  state = init_state(config, jax.random.key(config.seed))
  for model, part in restored.items():
    state[model] = {**state[model], **part} if isinstance(part, dict) else part
  return state, meta


def _field_defaults(module: type) -> dict[str, Any]:
  return {f.name: f.default for f in dataclasses.fields(module)
          if f.default is not dataclasses.MISSING}


def sample_levels(rng: jax.Array, batch: int, num_quantizers: int,
                  dropout: float) -> jax.Array:
  """Quantizer dropout (DAC): `[B]` levels, `~U{1..n_q}` with probability `dropout`, else `n_q`."""
  use_rng, level_rng = jax.random.split(rng)
  levels = jax.random.randint(level_rng, (batch,), 1, num_quantizers + 1)
  return jnp.where(jax.random.uniform(use_rng, (batch,)) < dropout, levels, num_quantizers)


POLARITY_FLIP_CORRELATION = -0.1


def correct_polarity(gen: dict, audio: jax.Array, recon: jax.Array) -> tuple[dict, jax.Array]:
  """Negates the decoder's output when this batch's reconstruction is the input upside down.

  The mel, SI-SDR and adversarial terms cannot tell a waveform from its negative; only the L1 and
  `snr` terms can, and a decoder that learned the inverted waveform is stuck there: they shrink
  its output towards zero (which the mel term resists) instead of flipping it. When the batch's
  correlation of input and reconstruction is below `POLARITY_FLIP_CORRELATION`, the final
  convolution's kernel and bias (before the odd `tanh`) and their Adam first moments change
  sign: the output is negated and the sign-blind terms see the same model. Returns
  `(gen, flipped)` and prints a line when it flips.
  """
  correlation = jnp.sum(audio * recon) / jnp.sqrt(
      jnp.sum(audio * audio) * jnp.sum(recon * recon) + 1e-12)
  flipped = correlation < POLARITY_FLIP_CORRELATION
  sign = jnp.where(flipped, -1.0, 1.0)
  jax.lax.cond(flipped, lambda: jax.debug.print(
      "reconstruction correlated {c:.3f} with the input: decoder output negated "
      "(correct_polarity)", c=correlation), lambda: None)

  def negate_output(tree):
    decoder = tree["decoder"]
    final = jax.tree.map(lambda x: x * sign.astype(x.dtype), decoder["final_conv"])
    return {**tree, "decoder": {**decoder, "final_conv": final}}

  moments = optim.get_moments(gen["opt"])
  opt = optim.set_moments(gen["opt"], moments._replace(mu=negate_output(moments.mu)))
  return {**gen, "params": negate_output(gen["params"]), "opt": opt}, flipped


def reseed_codes(rng: jax.Array, ema: dict[str, jax.Array], residuals: jax.Array,
                 threshold: float, reseed_all: jax.Array, count: float = 1.0,
                 split: float = 0.0, codes: jax.Array | None = None,
                 split_from_level: int = 0) -> dict[str, jax.Array]:
  """Re-seeds dead codebook rows from this batch's residuals (not in the original).

  A row whose EMA count is below `threshold` (or every row when `reseed_all`, used to
  initialise the codebooks from data) becomes a random residual vector of its level, with EMA
  count `count` and EMA sum `count` times the vector, so the next EMA update keeps it there. A
  re-seeded row that no vector picks is re-seeded again `log(count / threshold) / -log(0.99)`
  steps later (230 steps for count 1 and threshold 0.1).

  `split > 0` splits a used code instead: the dead row becomes `row + split * (r - row)`, where
  `r` is the random residual and `row` the codebook row that `r` picked, so busy codes are split
  in proportion to their use. In many dimensions a residual vector is farther from the other
  vectors of its cell than the cell's centroid is, so a row set to a residual is picked by few
  vectors and goes dead again (the deep levels' churn); a row near a centroid takes about half
  of that centroid's cell. Levels below `split_from_level` keep the residuals themselves, and
  `reseed_all` always uses them.

  Args:
    ema: `ema_cluster_size [n_q, K]`, `ema_w` and `codebooks` `[n_q, K, D]` after the update.
    residuals: `[n_q, B, T, D]` each level's input this step.
    codes: `[B, n_q, T]` the codes the residuals picked (needed when `split > 0`).
  """
  n_q, size = ema["ema_cluster_size"].shape
  flat = residuals.reshape(n_q, -1, residuals.shape[-1])
  picks = jax.random.randint(rng, (n_q, size), 0, flat.shape[1])
  samples = jnp.take_along_axis(flat, picks[..., None], axis=1)  # [n_q, K, D]
  if split > 0:
    picked = jnp.take_along_axis(jnp.swapaxes(codes, 0, 1).reshape(n_q, -1), picks, axis=1)
    rows = jnp.take_along_axis(ema["codebooks"], picked[..., None], axis=1)  # [n_q, K, D]
    splits = (jnp.arange(n_q) >= split_from_level)[:, None, None] & jnp.logical_not(reseed_all)
    samples = jnp.where(splits, rows + split * (samples - rows), samples)
  dead = (ema["ema_cluster_size"] < threshold) | reseed_all
  return {
      "ema_cluster_size": jnp.where(dead, count, ema["ema_cluster_size"]),
      "ema_w": jnp.where(dead[..., None], count * samples, ema["ema_w"]),
      "codebooks": jnp.where(dead[..., None], samples, ema["codebooks"]),
  }


def make_train_step(config: ml_collections.ConfigDict,
                    learning_rate: optax.Schedule | None = None, adversarial: bool = True
                    ) -> Callable[[State, jax.Array], tuple[State, dict]]:
  """Returns `train_step(state, audio [B, T]) -> (state, metrics)`, the original's GAN update.

  `learning_rate`: a function of `state["step"]` that sets both optimizers' learning rate before
  their updates (the trainer's per-epoch cosine, `optim.epoch_cosine_schedule`); None keeps the
  rate held in the optimizer states (e.g. a converted checkpoint's).
  `adversarial=False`: the generator step alone, without the discriminator (its parameters and
  optimizer state pass through; the adversarial, feature-matching and discriminator terms are 0),
  for the steps before `config.adversarial_start_step`.

  1. Discriminator step: the codec in eval mode (no EMA update) makes the fake audio, without
     gradient; hinge loss; AdamW on the discriminator.
  2. Generator step against the updated discriminator: the codec's training forward computes
     one EMA update; the loss's gradient is taken w.r.t. the pre-update codebooks; the EMA
     codebooks are written into the parameters and AdamW (weight decay included) is applied to
     the overwritten values. Only the codec's gradients are computed: the discriminator's weights
     and the real-audio path get none (the original computed and discarded them).
  """
  codec, disc = build_models(config)
  tx = make_optimizer(config)
  weights = dict(config.loss_weights)
  base_rng = jax.random.key(config.seed)
  factorised = bool(config.codec.get("codebook_dim", 0))
  dropout = config.vq.get("quantizer_dropout", 0.0)

  def train_step(state: State, audio: jax.Array) -> tuple[State, dict]:
    gen, dis = state["gen"], state["disc"]
    if learning_rate is not None:
      rate = learning_rate(state["step"])
      gen = {**gen, "opt": optim.set_learning_rate(gen["opt"], rate)}
      dis = {**dis, "opt": optim.set_learning_rate(dis["opt"], rate)}

    if adversarial:
      fake = jax.lax.stop_gradient(
          codec.apply({"params": gen["params"], "vq": gen["vq"]}, audio)["audio"])

      def disc_loss_fn(params):
        real_out = disc.apply({"params": params}, audio)
        fake_out = disc.apply({"params": params}, fake)
        return losses.discriminator_losses(real_out, fake_out)

      (disc_loss, disc_terms), disc_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(
          dis["params"])
      updates, disc_opt = tx.update(disc_grads, dis["opt"], dis["params"])
      disc_params = optax.apply_updates(dis["params"], updates)
    else:
      zero = jnp.zeros((), jnp.float32)
      disc_loss, disc_terms = zero, {"disc_real": zero, "disc_fake": zero}
      disc_grads, disc_params, disc_opt = {}, dis["params"], dis["opt"]

    levels = None
    if dropout:
      levels = sample_levels(jax.random.fold_in(jax.random.fold_in(base_rng, state["step"]), 1),
                             audio.shape[0], codec.num_quantizers, dropout)

    def gen_loss_fn(params):
      out = codec.apply({"params": params, "vq": gen["vq"]}, audio, train=True, levels=levels)
      real_out = fake_out = None
      if adversarial:
        real_out = jax.lax.stop_gradient(disc.apply({"params": disc_params}, audio))
        fake_out = disc.apply({"params": disc_params}, out["audio"])
      total, terms = losses.generator_losses(audio, out, real_out, fake_out, weights)
      return total, (terms, out)

    (gen_loss, (gen_terms, out)), gen_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(
        gen["params"])
    if factorised:
      params, vq = gen["params"], gen["vq"]
    else:
      ema = {k: out[k] for k in ("ema_cluster_size", "ema_w", "codebooks")}
      if config.vq.init_from_data or config.vq.dead_code_threshold > 0:
        ema = reseed_codes(jax.random.fold_in(base_rng, state["step"]), ema, out["residuals"],
                           config.vq.dead_code_threshold,
                           config.vq.init_from_data & (state["step"] == 0),
                           config.vq.get("reseed_count", 1.0),
                           config.vq.get("reseed_split", 0.0), out["codes"],
                           config.vq.get("reseed_split_from_level", 0))
      params = with_codebooks(gen["params"], ema["codebooks"])
      vq = {"quantizer": {"ema_cluster_size": ema["ema_cluster_size"], "ema_w": ema["ema_w"]}}
    updates, gen_opt = tx.update(gen_grads, gen["opt"], params)
    params = optax.apply_updates(params, updates)

    new_gen = {"params": params, "opt": gen_opt, "vq": vq}
    if config.get("correct_polarity", False):
      new_gen, _ = correct_polarity(new_gen, audio, jax.lax.stop_gradient(out["audio"]))
    new_state = {
        "gen": new_gen,
        "disc": {"params": disc_params, "opt": disc_opt},
        "step": state["step"] + 1,
    }
    metrics = {"gen_loss": gen_loss, "disc_loss": disc_loss, **gen_terms, **disc_terms,
               "gen_grad_norm": optax.global_norm(gen_grads),
               "disc_grad_norm": optax.global_norm(disc_grads),
               "learning_rate": optim.get_moments(gen_opt).learning_rate}
    return new_state, metrics

  return train_step


# --- evaluation -----------------------------------------------------------------------------------


def make_eval_step(config: ml_collections.ConfigDict) -> Callable:
  """`eval_step(gen, audio [B, T], lengths [B])` → reconstructions, codes and per-clip metrics.

  The codec runs in eval mode with the padding past each clip masked (see `Codec.encode`).
  """
  codec, _ = build_models(config)
  strides = tuple(config.codec.strides)
  size = config.codec.codebook_size

  def eval_step(gen: dict, audio: jax.Array, lengths: jax.Array) -> dict[str, jax.Array]:
    variables = {"params": gen["params"], "vq": gen["vq"]}
    codes = codec.apply(variables, audio, lengths, method=Codec.encode)
    frames = codec_lib.num_frames(lengths, strides, codec.causal)
    recon = codec.apply(variables, codes, frames, method=Codec.decode)
    recon = jnp.pad(recon, ((0, 0), (0, max(0, audio.shape[1] - recon.shape[1]))))
    recon = recon[:, : audio.shape[1]] * (jnp.arange(audio.shape[1]) < lengths[:, None])
    valid = (jnp.arange(codes.shape[2]) < frames[:, None])[:, None, :]  # [B, 1, F]
    counts = jnp.sum(jax.nn.one_hot(codes, size) * valid[..., None], axis=(0, 2))  # [n_q, K]
    return {"audio": recon, "counts": counts,
            "snr": eval_metrics.snr_db(audio, recon, lengths),
            "si_sdr": eval_metrics.si_sdr_db(audio, recon, lengths),
            "mel_distance": eval_metrics.mel_distance(audio, recon, lengths)}

  return eval_step


class Evaluator:
  """Validation on held-out shards and on a folder of real speech; writes samples and plots."""

  def __init__(self, config, mesh, validation_shards, workdir, writer):
    self.config, self.mesh, self.workdir, self.writer = config, mesh, workdir, writer
    self.validation_shards = validation_shards
    self.local_batch = sharding.local_batch_size(config.data.batch_size)
    eval_step = make_eval_step(config)

    def batch_step(gen, audio, lengths, valid):
      # Inputs come back replicated so that every process can read whole batches.
      return {**eval_step(gen, audio, lengths), "reference": audio, "lengths": lengths,
              "valid": valid}

    batch = sharding.batch_sharded(mesh)
    self._batch_step = jax.jit(
        batch_step, in_shardings=(sharding.replicated(mesh), batch, batch, batch),
        out_shardings=sharding.replicated(mesh))
    self._clip_step = jax.jit(eval_step, out_shardings=sharding.replicated(mesh))
    folder = config.data.eval_folder
    self.clips = []
    if folder and os.path.isdir(folder):
      self.clips = pipelines.folder_eval_clips(folder, normalize=True)
      logging.info("Evaluating on %d real-speech clips from %s", len(self.clips), folder)
    elif folder:
      logging.warning("Evaluation folder %s not found: skipping real-speech evaluation", folder)

  def _validation_batches(self):
    crop = self.config.eval_crop_samples or None
    batches = pipelines.codec_eval_batches(self.validation_shards, batch_size=self.local_batch,
                                           crop_samples=crop, normalize=self.config.data.normalize)
    for i, batch in enumerate(batches):
      if self.config.eval_batches and i >= self.config.eval_batches:
        break
      yield batch

  def __call__(self, gen: dict, step: int) -> dict[str, float]:
    results: dict[str, float] = {}
    samples = []
    if self.validation_shards:
      values, counts = {"snr": [], "si_sdr": [], "mel_distance": []}, 0
      for batch in self._validation_batches():
        out = jax.device_get(self._batch_step(gen, *sharding.global_batch(
            self.mesh, (batch["audio"], batch["lengths"], batch["valid"]))))
        valid = out["valid"]
        for name in values:
          values[name].extend(out[name][valid])
        counts = counts + out["counts"]
        for i in np.flatnonzero(valid)[: self.config.eval_audio_samples - len(samples)]:
          length = out["lengths"][i]
          samples.append((out["reference"][i, :length], out["audio"][i, :length]))
      results.update({f"val/{k}": float(np.mean(v)) for k, v in values.items() if v})
      usage = eval_metrics.codebook_usage(counts)
      for level in range(len(usage["perplexity"])):
        results[f"val/perplexity_{level}"] = float(usage["perplexity"][level])
        results[f"val/dead_codes_{level}"] = float(usage["dead"][level])
      results["val/perplexity_mean"] = float(np.mean(usage["perplexity"]))
      results["val/dead_codes_mean"] = float(np.mean(usage["dead"]))
    if self.clips:
      signal_keys = ("snr", "si_sdr", "mel_distance")
      values = {key: [] for key in signal_keys}
      for i, (name, wave) in enumerate(self.clips):
        width = bucket_length(wave.size, SAMPLE_RATE)
        audio = np.pad(wave, (0, width - wave.size))[None]
        out = self._clip_step(gen, audio, np.array([wave.size], np.int32))
        for key in signal_keys:
          values[key].append(float(out[key][0]))
        recon = np.asarray(out["audio"][0, :wave.size])
        if i == 0:
          samples.append((wave, recon))
        if self.config.eval_quick_quality:
          for key, value in quality.quick_quality(wave, recon).items():
            values.setdefault(key, []).append(value)
      # PESQ and STOI are NaN for clips too short to score: the mean is over the others.
      results.update({f"real/{k}": float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
                      for k, v in values.items()})
    if jax.process_index() == 0:
      self._write_samples(samples, step)
    return results

  def _write_samples(self, samples, step: int) -> None:
    folder = os.path.join(self.workdir, "samples", f"step_{step:07d}")
    os.makedirs(folder, exist_ok=True)
    for i, (original, recon) in enumerate(samples):
      soundfile.write(os.path.join(folder, f"{i}_original.wav"), original, SAMPLE_RATE)
      soundfile.write(os.path.join(folder, f"{i}_reconstruction.wav"), np.clip(recon, -1, 1),
                      SAMPLE_RATE)
      if self.writer is not None:
        self.writer.add_audio(f"sample_{i}/original", original, step, sample_rate=SAMPLE_RATE)
        self.writer.add_audio(f"sample_{i}/reconstruction", recon, step, sample_rate=SAMPLE_RATE)
      plots.spectrogram_comparison(original, recon, os.path.join(folder, f"{i}_spectrogram.png"),
                                   title=f"step {step}, sample {i}")


# --- the training loop ----------------------------------------------------------------------------


def resolve_shards(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """`(train, validation)` shard paths; the bundled sample corpus when none are configured."""
  if not config.data.train_shards:
    corpus = sample_corpus.sample_shards()
    logging.info("No data configured: training on the bundled Telugu sample corpus")
    return corpus["train"], corpus["validation"]
  return (loop.expand_shards(config.data.train_shards),
          loop.expand_shards(config.data.validation_shards))


def _eval_summary(step: int, results: dict[str, float]) -> str:
  shown = {k: v for k, v in results.items()
           if "_" not in k.split("/")[1] or "mean" in k or k.endswith(("si_sdr", "mel_distance"))}
  return f"eval step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in shown.items())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the codec GAN, resuming from `workdir` or `config.init_from`. Returns final metrics."""
  build_models(config)  # Validates the model options before any work.
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  is_main = jax.process_index() == 0

  # Data.
  train_shards, validation_shards = resolve_shards(config)
  global_batch = config.data.batch_size
  local_batch = sharding.local_batch_size(global_batch)
  train_iter = pipelines.codec_train_iterator(
      train_shards, batch_size=local_batch, crop_samples=config.data.crop_samples,
      normalize=config.data.normalize, seed=config.seed, num_workers=config.data.num_workers)
  num_records = len(pipelines.RecordSource(train_shards))
  steps_per_epoch = config.steps_per_epoch or max(1, num_records // global_batch)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch

  # State: the workdir's checkpoint, else config.init_from, else fresh.
  checkpoint_manager = checkpoints.TrainingCheckpoints(
      os.path.join(workdir, checkpoints.WORKDIR_CHECKPOINTS), keep=config.keep_checkpoints)
  replicated = sharding.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract_state(config))
  meta = checkpoints.model_meta("codec", codec=_jsonable(config.codec),
                                discriminator=_jsonable(config.discriminator))
  meta.update(config=config.to_json(), gen_optimizer=dict(config.optimizer),
              disc_optimizer=dict(config.optimizer))

  def load_init(path):
    state, saved = load_state(path, config)
    extra = {"start_learning_rate": float(optim.get_moments(state["gen"]["opt"]).learning_rate)}
    if "epoch" in saved:
      extra["start_epoch"] = saved["epoch"] + 1
    return jax.device_put(state, replicated), extra

  restored = loop.restore_or_initialize(
      checkpoint_manager, abstract, train_iter, meta, config.init_from, load_init,
      lambda: jax.device_put(init_state(config, jax.random.key(config.seed)), replicated))
  state = restored.state
  meta.setdefault("start_learning_rate", config.optimizer.learning_rate)
  first_step = int(state["step"])

  def epoch_of(step):
    return meta["start_epoch"] + (step - meta["start_step"]) // steps_per_epoch

  schedule = optim.epoch_cosine_schedule(
      config.optimizer.learning_rate, config.num_epochs, steps_per_epoch, meta["start_step"],
      meta["start_epoch"], meta["start_learning_rate"])

  def compiled_step(adversarial):
    return jax.jit(make_train_step(config, schedule, adversarial),
                   in_shardings=(replicated, sharding.batch_sharded(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=0)

  gan_step = compiled_step(True)
  start = config.get("adversarial_start_step", 0)
  if first_step < start:
    warmup_step, next_step = compiled_step(False), [first_step]

    def train_step(state, batch):
      # The loop calls this once per step, in order, from first_step.
      step = warmup_step if next_step[0] < start else gan_step
      next_step[0] += 1
      return step(state, batch)
  else:
    train_step = gan_step
  log = loop.MetricsLog(workdir, restored.checkpoint_step or 0)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  evaluator = Evaluator(config, mesh, validation_shards, workdir, log.writer)
  audio_seconds = global_batch * config.data.crop_samples / SAMPLE_RATE
  print(f"training {total_steps} steps ({steps_per_epoch} per epoch) from step {first_step} on "
        f"{jax.device_count()} devices, {jax.process_count()} processes; global batch "
        f"{global_batch} × {config.data.crop_samples} samples", flush=True)

  def evaluate(state, step):
    results = evaluator(state["gen"], step)
    if is_main:
      print(_eval_summary(step, results), flush=True)
    return results

  spec = loop.LoopSpec(
      train_step=train_step,
      next_batch=lambda: (sharding.global_batch(mesh, next(train_iter)["audio"]),
                          {"audio_seconds": audio_seconds}),
      evaluate=evaluate,
      loss_keys=("gen_loss", "disc_loss"),
      progress_keys=("gen_loss", "disc_loss", "l1", "vq", "mel", "si_sdr", "snr",
                     "feature_matching"),
      throughput=("audio_seconds", "audio-s/s"),
      best_of=lambda results: results.get("val/snr"),
      step_meta=lambda step: {"epoch": epoch_of(step - 1)})
  try:
    _, results = loop.run(spec, config, state, first_step, total_steps, checkpoint_manager,
                          restored.checkpoint_step, meta, train_iter, log)
  finally:
    log.close()
  return results


def _jsonable(config_dict) -> dict[str, Any]:
  return json.loads(config_dict.to_json())
