"""The original optimizer as an optax chain, and access to its Adam moments.

PyTorch's `AdamW` + `clip_grad_norm_` + `CosineAnnealingLR` stepped once per epoch becomes
`inject_hyperparams(chain(clip_by_global_norm, adamw))`: the learning rate is part of the
optimizer state (so a resumed run keeps it), and the trainer sets it at each epoch boundary.
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
