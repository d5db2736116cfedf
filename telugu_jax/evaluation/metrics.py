"""Codec quality metrics on padded batches: SNR, SI-SDR, mel distance, codebook usage.

Per-clip metrics take `lengths` and ignore the padding past each clip's end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from telugu_jax import losses

_EPS = 1e-12


def _mask(x: jax.Array, lengths: jax.Array) -> jax.Array:
  return (jnp.arange(x.shape[-1])[None, :] < lengths[:, None]).astype(x.dtype)


def snr_db(reference: jax.Array, estimate: jax.Array, lengths: jax.Array) -> jax.Array:
  """Per clip `10 log10(mean(x^2) / mean((x - x_hat)^2))`, the original's validation SNR.

  (The original averaged this per batch over all elements of the batch; per clip is the same
  for one-clip batches and does not let loud clips dominate.)
  """
  m = _mask(reference, lengths)
  signal = jnp.sum(m * reference ** 2, axis=-1)
  noise = jnp.sum(m * (reference - estimate) ** 2, axis=-1)
  return 10.0 * jnp.log10((signal + _EPS) / (noise + _EPS))


def si_sdr_db(reference: jax.Array, estimate: jax.Array, lengths: jax.Array) -> jax.Array:
  """Per clip scale-invariant SDR (zero-mean signals, optimal scaling of the reference)."""
  m = _mask(reference, lengths)
  count = jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)
  reference = m * (reference - jnp.sum(m * reference, axis=-1, keepdims=True) / count)
  estimate = m * (estimate - jnp.sum(m * estimate, axis=-1, keepdims=True) / count)
  scale = jnp.sum(reference * estimate, axis=-1, keepdims=True) / (
      jnp.sum(reference ** 2, axis=-1, keepdims=True) + _EPS)
  target = scale * reference
  return 10.0 * jnp.log10((jnp.sum(target ** 2, axis=-1) + _EPS)
                          / (jnp.sum((estimate - target) ** 2, axis=-1) + _EPS))


def mel_distance(reference: jax.Array, estimate: jax.Array, lengths: jax.Array) -> jax.Array:
  """Per clip multi-scale log-mel L1 (`losses.multiscale_mel`) over the clip's own frames, its
  padding zeroed in both."""
  m = _mask(reference, lengths)
  return jax.vmap(lambda x, y, n: losses.multiscale_mel(x[None], y[None], lengths=n[None]))(
      m * reference, m * estimate, lengths)


def codebook_usage(counts: np.ndarray) -> dict[str, np.ndarray]:
  """Usage statistics from code counts `[n_q, codebook_size]`.

  Returns per level: `perplexity` (exp of the code distribution's entropy: the number of codes
  in effective use), `dead` (codes never used) and `usage` (fraction used).
  """
  counts = np.asarray(counts, np.float64)
  p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
  entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
  return {"perplexity": np.exp(entropy), "dead": np.sum(counts == 0, axis=1),
          "usage": np.mean(counts > 0, axis=1)}
