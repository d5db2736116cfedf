"""Inference entry points: numpy in, numpy out."""

from telugu_jax.inference.codec import load_codec, load_discriminator
from telugu_jax.inference.respond import Responder
from telugu_jax.inference.s2s import load_s2s
from telugu_jax.inference.streaming import StreamDecoder, StreamEncoder, WindowedDecoder

__all__ = ["Responder", "StreamDecoder", "StreamEncoder", "WindowedDecoder", "load_codec",
           "load_discriminator", "load_s2s"]
