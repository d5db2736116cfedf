"""S2S transformer (speech codes in, speech codes out): the model configuration.

    python -m telugu_jax.main --config=configs/s2s.py --workdir=/tmp/s2s
    python -m telugu_jax.main --config=configs/s2s.py:smoke --workdir=/tmp/s2s_smoke

(The S2S trainer that these commands run comes with its own issue; `config.model` is what
`telugu_jax.models.s2s.S2SConfig.from_dict(config.model.to_dict())` builds today.)

Variants (`configs/s2s.py:VARIANT`):
  (none)    the original's sizes (`S2SConfig` defaults: 512 hidden, 8 heads, 6 + 6 layers,
            ffn 2048, conv kernel 31, chunks of 20 frames with 4 of lookahead, 1024 codes x 8
            levels), with the original's defects fixed and the delay pattern [0, 1, 1, 1, 1, 1,
            1, 1].
  original  the original model exactly, defects included (for converted checkpoints).
  smoke     a tiny fixed model (hidden 64, 2 + 2 layers, 32 codes) for tests and demos.
"""

import ml_collections

from telugu_jax.models.s2s import S2SConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "s2s"
  if arg is None:
    model = S2SConfig(variant="fixed", delays=(0, 1, 1, 1, 1, 1, 1, 1))
  elif arg == "original":
    model = S2SConfig(variant="original")
  elif arg == "smoke":
    model = S2SConfig(variant="fixed", hidden_dim=64, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2, ffn_dim=128, conv_kernel_size=7, vocab_size=32,
                      delays=(0, 1, 1, 1, 1, 1, 1, 1))
  else:
    raise ValueError(f"unknown configs/s2s.py variant {arg!r}: expected 'original', 'smoke' or "
                     "none")
  config.model = ml_collections.ConfigDict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in model.to_dict().items()})
  config.lock()
  return config
