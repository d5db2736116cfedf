"""Codec GAN training: the original `TeluCodec` + `DACDiscriminator` recipe.

    python -m telugu_jax.main --config=configs/codec.py --workdir=/tmp/codec
    python -m telugu_jax.main --config=configs/codec.py:smoke --workdir=/tmp/codec_smoke

Variants (`configs/codec.py:VARIANT`):
  (none)  the original's architecture and hyper-parameters.
  smoke   tiny channel counts and codebooks, for tests.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "codec"

  # The original TeluCodec(16000, hidden_dim=1024, codebook_size=1024, num_quantizers=8).
  config.codec = ml_collections.ConfigDict(dict(
      encoder_channels=(32, 64, 128, 256, 512),
      decoder_channels=(512, 256, 128, 64, 32, 32),
      strides=(2, 2, 2, 2, 5),
      hidden_dim=1024,
      codebook_size=1024,
      num_quantizers=8,
      # "per_level" (original: the gradient reaches the encoder 8 times) or "once".
      straight_through="per_level",
  ))
  config.discriminator = ml_collections.ConfigDict(dict(
      periods=(2, 3, 5, 7, 11),
      n_ffts=(2048, 1024, 512),
      period_channels=(32, 128, 512, 1024, 1024),
      stft_channels=32,
  ))

  # Both models: AdamW(lr 1e-4, betas (0.5, 0.9), eps 1e-8, weight decay 0.01), gradients clipped
  # to global norm 1.0, learning rate cosine-annealed once per epoch over `num_epochs`.
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, b1=0.5, b2=0.9, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
      num_epochs=100,
  ))
  # Generator objective; "mel" (multi-scale log-mel L1) is not in the original.
  config.loss_weights = ml_collections.ConfigDict(dict(
      adversarial=1.0, feature_matching=10.0, l1=0.1, vq=1.0, mel=0.0,
  ))

  if arg == "smoke":
    config.codec.encoder_channels = (4, 8, 8, 8, 8)
    config.codec.decoder_channels = (8, 8, 8, 8, 4, 4)
    config.codec.hidden_dim = 16
    config.codec.codebook_size = 32
    config.discriminator.period_channels = (4, 8, 8, 8, 8)
    config.discriminator.stft_channels = 4
  elif arg is not None:
    raise ValueError(f"unknown configs/codec.py variant {arg!r}: expected 'smoke' or none")
  config.lock()
  return config
