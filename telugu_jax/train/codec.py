"""Codec GAN training: state, the GAN update in the original's order.

The training state is an explicit pytree:

    {"gen":  {"params": codec params, "vq": EMA statistics, "opt": AdamW state},
     "disc": {"params": discriminator params, "opt": AdamW state},
     "step": int32 number of GAN updates done}

`train_step` is pure and jit-able (`jax.jit(step, donate_argnums=0)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from telugu_jax import losses
from telugu_jax.models.codec import Codec
from telugu_jax.models.discriminators import Discriminator
from telugu_jax.train import checkpointing, optim

State = dict[str, Any]


def build_models(config: ml_collections.ConfigDict) -> tuple[Codec, Discriminator]:
  return Codec(**config.codec), Discriminator(**config.discriminator)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  return optim.make_adamw(o.learning_rate, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm)


def init_state(config: ml_collections.ConfigDict, rng: jax.Array, num_samples: int = 16000) -> State:
  """A fresh state (PyTorch's default initialisation, as the original)."""
  codec, disc = build_models(config)
  tx = make_optimizer(config)

  @jax.jit
  def init(rng):
    codec_rng, disc_rng = jax.random.split(rng)
    audio = jnp.zeros((1, num_samples), jnp.float32)
    codec_vars = codec.init(codec_rng, audio)
    disc_params = disc.init(disc_rng, audio)["params"]
    return {
        "gen": {"params": codec_vars["params"], "vq": codec_vars["vq"],
                "opt": tx.init(codec_vars["params"])},
        "disc": {"params": disc_params, "opt": tx.init(disc_params)},
        "step": jnp.zeros((), jnp.int32),
    }

  return init(rng)


def abstract_state(config: ml_collections.ConfigDict, num_samples: int = 16000) -> State:
  """The state's structure, shapes and dtypes (`jax.ShapeDtypeStruct`s), for restoring."""
  return jax.eval_shape(lambda: init_state(config, jax.random.key(0), num_samples))


def with_codebooks(params: dict, codebooks: jax.Array) -> dict:
  return {**params, "quantizer": {**params["quantizer"], "codebooks": codebooks}}


def load_state(path: str, config: ml_collections.ConfigDict,
               step: int | None = None) -> tuple[State, dict[str, Any]]:
  """Restores a full GAN state (e.g. a converted PyTorch checkpoint) shaped for `config`.

  Raises:
    ValueError: if the checkpoint's architecture differs from `config`'s.
  """
  root = checkpointing.resolve(path)
  meta = checkpointing.read_meta(root, step)
  for key in ("codec", "discriminator"):
    # Options that change no parameter shape (straight_through) may differ.
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.get(key, {}).items()
             if k != "straight_through"}
    wanted = {k: v for k, v in config[key].to_dict().items() if k != "straight_through"}
    if saved != wanted:
      raise ValueError(f"{path}: the checkpoint's {key} {saved} differs from the config's {wanted}")
  state, meta = checkpointing.restore(root, step, abstract_state(config))
  return state, meta


def make_train_step(config: ml_collections.ConfigDict) -> Callable[[State, jax.Array],
                                                                      tuple[State, dict]]:
  """Returns `train_step(state, audio [B, T]) -> (state, metrics)`, the original's GAN update.

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

  def train_step(state: State, audio: jax.Array) -> tuple[State, dict]:
    gen, dis = state["gen"], state["disc"]

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

    def gen_loss_fn(params):
      out = codec.apply({"params": params, "vq": gen["vq"]}, audio, train=True)
      real_out = jax.lax.stop_gradient(disc.apply({"params": disc_params}, audio))
      fake_out = disc.apply({"params": disc_params}, out["audio"])
      total, terms = losses.generator_losses(audio, out, real_out, fake_out, weights)
      return total, (terms, out)

    (gen_loss, (gen_terms, out)), gen_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(
        gen["params"])
    params = with_codebooks(gen["params"], out["codebooks"])
    updates, gen_opt = tx.update(gen_grads, gen["opt"], params)
    params = optax.apply_updates(params, updates)

    new_state = {
        "gen": {"params": params, "opt": gen_opt,
                "vq": {"quantizer": {"ema_cluster_size": out["ema_cluster_size"],
                                     "ema_w": out["ema_w"]}}},
        "disc": {"params": disc_params, "opt": disc_opt},
        "step": state["step"] + 1,
    }
    metrics = {"gen_loss": gen_loss, "disc_loss": disc_loss, **gen_terms, **disc_terms,
               "gen_grad_norm": optax.global_norm(gen_grads),
               "disc_grad_norm": optax.global_norm(disc_grads)}
    return new_state, metrics

  return train_step
