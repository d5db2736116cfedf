"""Inference entry points: numpy in, numpy out."""

from telugu_jax.inference.codec import load_codec, load_discriminator

__all__ = ["load_codec", "load_discriminator"]
