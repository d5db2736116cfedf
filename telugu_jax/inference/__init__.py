"""Inference entry points: numpy in, numpy out.

The names below load their modules (and JAX) on first use, so that command lines can build
their parsers from light submodules such as `postfilter` without importing JAX.
"""

import importlib
from typing import TYPE_CHECKING

_MODULE_OF = {"load_codec": "codec", "load_discriminator": "codec", "Responder": "respond",
              "load_s2s": "s2s", "StreamDecoder": "streaming", "StreamEncoder": "streaming",
              "WindowedDecoder": "streaming"}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
  from telugu_jax.inference.codec import load_codec, load_discriminator
  from telugu_jax.inference.respond import Responder
  from telugu_jax.inference.s2s import load_s2s
  from telugu_jax.inference.streaming import StreamDecoder, StreamEncoder, WindowedDecoder


def __getattr__(name: str):
  if name not in _MODULE_OF:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
