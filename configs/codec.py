"""Codec GAN training: the original `TeluCodec` + `DACDiscriminator` recipe.

    python -m telugu_jax.main --config=configs/codec.py --workdir=/tmp/codec \
        --config.data.train_shards='/data/shards/train-*.array_record'
    python -m telugu_jax.main --config=configs/codec.py:demo --workdir=/tmp/codec_demo
    python -m telugu_jax.main --config=configs/codec.py --workdir=/tmp/codec \
        --config.init_from=converted/   # continue a converted PyTorch checkpoint

Variants (`configs/codec.py:VARIANT`):
  (none)  the original's architecture and hyper-parameters (batch 16 of 1 s crops, 100 epochs).
  demo    a narrow codec on the bundled Telugu sample corpus: under 10 minutes on 2 CPU cores, with
          checkpoints, TensorBoard scalars, audio samples and spectrogram plots.
  smoke   tiny channel counts and codebooks, a few steps: for tests.
"""

import os

import ml_collections

from telugu_jax.data import sample_corpus

_SHARED_EVAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "common-voice-te-dev")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "codec"
  config.seed = 0
  # Resume order: the workdir's latest checkpoint, else this checkpoint (a converted PyTorch
  # checkpoint or another workdir), else a fresh initialisation.
  config.init_from = ""

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
  # Improvement over the original's EMA codebooks (defect 2): initialise every codebook row from
  # the first batch's residuals and re-seed rows whose EMA count falls below the threshold.
  # 0.0 and False are the original.
  config.vq = ml_collections.ConfigDict(dict(init_from_data=False, dead_code_threshold=0.0))
  # "float32" or "bfloat16" convolutions (parameters, quantizer, losses stay float32).
  config.compute_dtype = "float32"

  # Both models: AdamW(lr 1e-4, betas (0.5, 0.9), eps 1e-8, weight decay 0.01), gradients clipped
  # to global norm 1.0, learning rate cosine-annealed once per epoch over `num_epochs`.
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, b1=0.5, b2=0.9, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
  ))
  config.num_epochs = 100
  # Optimizer steps per epoch; 0 = training records // global batch size (as the original).
  config.steps_per_epoch = 0
  # Stop after this many steps in all (0 = num_epochs * steps_per_epoch).
  config.total_steps = 0

  # Generator objective; "mel" (multi-scale log-mel L1) is not in the original.
  config.loss_weights = ml_collections.ConfigDict(dict(
      adversarial=1.0, feature_matching=10.0, l1=0.1, vq=1.0, mel=0.0,
  ))

  config.data = ml_collections.ConfigDict(dict(
      # ArrayRecord shards (globs allowed, comma-separated). Empty: the bundled sample corpus.
      train_shards="",
      validation_shards="",
      batch_size=16,  # global, over all devices and hosts
      crop_samples=16000,
      num_workers=0,  # grain worker processes per host
      # Real speech evaluated at every validation, never trained on; skipped if absent.
      eval_folder=os.path.normpath(_SHARED_EVAL),
  ))

  config.log_every = 10
  config.eval_every = 500  # and at the end; 0 = never
  config.eval_batches = 8  # validation batches per evaluation (0 = the whole split)
  config.eval_crop_samples = 32000  # fixed validation crops (0 = whole utterances)
  config.eval_audio_samples = 3  # clips written to TensorBoard and disk per evaluation
  config.checkpoint_every = 500
  config.keep_checkpoints = 3  # the latest N, plus the best by validation SNR

  if arg == "smoke":
    config.codec.encoder_channels = (4, 8, 8, 8, 8)
    config.codec.decoder_channels = (8, 8, 8, 8, 4, 4)
    config.codec.hidden_dim = 16
    config.codec.codebook_size = 32
    config.discriminator.period_channels = (4, 8, 8, 8, 8)
    config.discriminator.stft_channels = 4
    config.data.batch_size = 4
    config.data.crop_samples = 4000
    config.total_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.eval_batches = 1
    config.eval_crop_samples = 8000
    config.eval_audio_samples = 1
    config.checkpoint_every = 3
    config.data.eval_folder = ""
  elif arg == "demo":
    config.codec.update(sample_corpus.DEMO_CODEC)
    config.discriminator.period_channels = (8, 16, 32, 64, 64)
    config.discriminator.stft_channels = 8
    config.data.batch_size = 8
    config.data.crop_samples = 8000
    config.num_epochs = 25  # 8 steps per epoch on the sample corpus: 200 steps
    config.log_every = 20
    config.eval_every = 100
    config.checkpoint_every = 100
    config.eval_batches = 4
  elif arg is not None:
    raise ValueError(f"unknown configs/codec.py variant {arg!r}: expected 'demo', 'smoke' or none")
  config.lock()
  return config
