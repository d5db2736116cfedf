"""Inference entry points: numpy in, numpy out."""

from telugu_jax.inference.codec import load_codec, load_discriminator
from telugu_jax.inference.respond import Responder
from telugu_jax.inference.s2s import load_s2s

__all__ = ["Responder", "load_codec", "load_discriminator", "load_s2s"]
