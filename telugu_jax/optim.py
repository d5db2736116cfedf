"""The original optimizer as an optax chain, and access to its Adam moments.

PyTorch's `AdamW` + `clip_grad_norm_` + `CosineAnnealingLR` stepped once per epoch becomes
`inject_hyperparams(chain(clip_by_global_norm, adamw))`: the learning rate is part of the
optimizer state (a converted PyTorch checkpoint brings its current value), and the codec
trainer's jitted update sets it from the step with `epoch_cosine_schedule` before each update, so
it is a function of the step alone (a resumed run gets exactly the rates of an uninterrupted one).
The update is PyTorch's: decoupled weight decay `p *= 1 - lr * wd`, bias-corrected moments,
`eps` added to `sqrt(v_hat)`. (PyTorch's clip divides by `norm + 1e-6`, optax by `norm`: a
relative difference of 1e-6 / norm in the clipped gradient.)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax


def make_adamw(learning_rate: float, b1: float, b2: float, eps: float, weight_decay: float,
               clip_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW, with an injectable `learning_rate`."""

  @optax.inject_hyperparams
  def chain(learning_rate):
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))

  return chain(learning_rate=learning_rate)


def cosine_learning_rate(base: float, epoch: int, num_epochs: int) -> float:
  """`CosineAnnealingLR(T_max=num_epochs, eta_min=0)` after `epoch` scheduler steps."""
  return base * (1.0 + math.cos(math.pi * epoch / num_epochs)) / 2.0


def epoch_cosine_schedule(base: float, num_epochs: int, steps_per_epoch: int, start_step: int,
                          start_epoch: int, start_learning_rate: float) -> optax.Schedule:
  """The learning rate at each step of a run that began at `start_step` in epoch `start_epoch`.

  Epoch `start_epoch` runs at `start_learning_rate` (for a fresh run the base rate; for a
  converted PyTorch checkpoint the rate its scheduler had reached), every later epoch `e` at
  `cosine_learning_rate(base, e, num_epochs)`, as the original's per-epoch scheduler steps give.
  """

  def schedule(step):
    epoch = start_epoch + (step - start_step) // steps_per_epoch
    cosine = base * (1.0 + jnp.cos(jnp.pi * epoch / num_epochs)) / 2.0
    return jnp.where(epoch == start_epoch, start_learning_rate, cosine).astype(jnp.float32)

  return schedule


class AdamMoments(NamedTuple):
  count: Any  # int32 scalar: the number of optimizer steps taken (PyTorch's `step`)
  mu: Any  # first moments, shaped like the parameters (PyTorch's `exp_avg`)
  nu: Any  # second moments (`exp_avg_sq`)
  learning_rate: Any  # float32 scalar


def _unpack(state):
  clip_state, (adam, *rest) = state.inner_state
  return clip_state, adam, rest


def get_moments(state) -> AdamMoments:
  """Reads the Adam moments, step and learning rate of a `make_adamw` state."""
  _, adam, _ = _unpack(state)
  return AdamMoments(adam.count, adam.mu, adam.nu, state.hyperparams["learning_rate"])


def set_moments(state, moments: AdamMoments):
  """Returns a `make_adamw` state holding `moments` (e.g. converted from PyTorch)."""
  clip_state, adam, rest = _unpack(state)
  count = jnp.asarray(moments.count, jnp.int32)
  adam = adam._replace(count=count, mu=moments.mu, nu=moments.nu)
  return state._replace(
      count=count,
      hyperparams={**state.hyperparams,
                   "learning_rate": jnp.asarray(moments.learning_rate, jnp.float32)},
      inner_state=(clip_state, (adam, *rest)))


def set_learning_rate(state, learning_rate):
  return state._replace(hyperparams={**state.hyperparams,
                                     "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
