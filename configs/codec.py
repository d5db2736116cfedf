"""Codec GAN training: the original `TeluCodec` + `DACDiscriminator` recipe.

    python -m telugu_jax.main --config=configs/codec.py --workdir=/tmp/codec \
        --config.data.train_shards='/data/shards/train-*.array_record'
    python -m telugu_jax.main --config=configs/codec.py:demo --workdir=/tmp/codec_demo
    python -m telugu_jax.main --config=configs/codec.py --workdir=/tmp/codec \
        --config.init_from=converted/   # continue a converted PyTorch checkpoint

Variants (`configs/codec.py:VARIANT`):
  (none)  the original's architecture and hyper-parameters (batch 16 of 1 s crops, 100 epochs).
  demo    a narrow codec on the bundled Telugu sample corpus with the fastest-learning recipe (mel
          loss, data-initialised EMA codebooks with dead-code re-seeding, lr 1e-3; 960
          reconstruction steps without the discriminator, then 160 GAN steps): under 10 minutes
          on 2 CPU cores, with checkpoints, TensorBoard scalars, audio samples and spectrogram
          plots.
  smoke   tiny channel counts and codebooks, a few steps: for tests.
  lowrate 50 frames/s, 8 levels x 1024 codes (4 kbit/s, decodable with the first k levels), the
          improved recipe (factorised codes, quantizer dropout, multi-scale mel loss), trained on
          `tools/make_speech_corpus.py --output=CORPUS --hours=2`:
          python -m telugu_jax.main --config=configs/codec.py:lowrate --workdir=/tmp/codec_lowrate \
              --config.data.train_shards='CORPUS/train-*.arrayrecord' \
              --config.data.validation_shards='CORPUS/validation-*.arrayrecord'
  lowrate_hour  lowrate with the recipe of the README's one-hour CPU comparison with the original
          (EMA codebooks initialised from data, dead codes re-seeded with a light EMA count, the
          straight-through gradient once, the SI-SDR and SNR waveform terms, lr 3e-4 with DAC's
          betas, 0.5 s crops, 1800 reconstruction steps):
          python -m telugu_jax.main --config=configs/codec.py:lowrate_hour --workdir=/tmp/lowrate_hour \
              --config.data.train_shards='CORPUS/train-*.arrayrecord' \
              --config.data.validation_shards='CORPUS/validation-*.arrayrecord'
  lowrate_streaming  lowrate as a causal codec (`causal=True`, see "streaming").
  lowrate_demo  the demo's sizes and recipe at lowrate's 50 frames/s (8 x 256 codes, 3.2 kbit/s):
          the codec of the conversation demo (`tools/conversation_demo.py`).
  streaming  the causal codec (`Codec(causal=True)`: left-padded convolutions, per-step channel
          normalisation, transposed convolutions trimmed causally), otherwise the original's
          architecture and recipe, for the voice agent's exact streaming encode/decode
          (`codec.stream_encoder()`, `codec.stream_decoder()`; README "Streaming codec"):
          python -m telugu_jax.main --config=configs/codec.py:streaming --workdir=/tmp/codec_stream
  streaming_smoke  the causal codec at the smoke sizes: for tests.
"""

import os

import ml_collections

from telugu_jax.data import sample_corpus

_SHARED_EVAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "common-voice-te-dev")


def _improved_recipe(config: ml_collections.ConfigDict) -> None:
  """DAC's quantizer recipe for long runs (README, "Low-rate codec and the improved recipe")."""
  config.codec.codebook_dim = 8  # factorised codes: 8-dim L2-normalised lookups, learned
  config.vq.quantizer_dropout = 0.5
  config.loss_weights.mel = 15.0


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
      # > 0: factorised codes (DAC): L2-normalised lookups in this many dimensions, learned
      # codebooks. 0: the original's EMA codebooks in the latent space.
      codebook_dim=0,
      # "transposed" (original) or "resize": the decoder's upsampling layers as nearest-neighbour
      # upsampling + convolution, same cost, no frame-periodic tones (`models.codec.Decoder`).
      upsample="transposed",
  ))
  config.discriminator = ml_collections.ConfigDict(dict(
      periods=(2, 3, 5, 7, 11),
      n_ffts=(2048, 1024, 512),
      period_channels=(32, 128, 512, 1024, 1024),
      stft_channels=32,
  ))
  # Improvement over the original's EMA codebooks (defect 2): initialise every codebook row from
  # the first batch's residuals and re-seed rows whose EMA count falls below the threshold.
  # 0.0 and False are the original. A re-seeded row starts with EMA count `reseed_count`: the
  # lower, the sooner it is re-seeded again if no vector picks it (see `train.codec.reseed_codes`).
  # `reseed_split` > 0: a dead row splits a used code (that code's row moved this fraction of the
  # way to a residual it quantizes) instead of becoming the residual itself; 0.0 is the latter.
  # It applies to levels `reseed_split_from_level` and deeper (the noise-like ones).
  # `quantizer_dropout`: the share of examples that train only the first k ~ U{1..n_q} levels
  # (DAC), so that decoding with fewer levels works.
  config.vq = ml_collections.ConfigDict(dict(init_from_data=False, dead_code_threshold=0.0,
                                             reseed_count=1.0, reseed_split=0.0,
                                             reseed_split_from_level=0,
                                             quantizer_dropout=0.0))
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

  # Steps before this one train the generator alone (no discriminator, no adversarial or
  # feature-matching term): a reconstruction warm-up, not in the original (0).
  config.adversarial_start_step = 0
  # Not in the original: negate the decoder's output (final convolution and its Adam moments)
  # when a training batch's reconstruction correlates with the input below -0.1, i.e. the decoder
  # learned the waveform upside down, which only the L1 and snr terms can tell
  # (`train.codec.correct_polarity`).
  config.correct_polarity = False
  # Generator objective; "mel" (multi-scale log-mel L1), "si_sdr" and "snr" (minus the SI-SDR
  # and the SNR in dB of the reconstruction) are not in the original.
  config.loss_weights = ml_collections.ConfigDict(dict(
      adversarial=1.0, feature_matching=10.0, l1=0.1, vq=1.0, mel=0.0, si_sdr=0.0, snr=0.0,
  ))

  config.data = ml_collections.ConfigDict(dict(
      # ArrayRecord shards (globs allowed, comma-separated). Empty: the bundled sample corpus.
      train_shards="",
      validation_shards="",
      batch_size=16,  # global, over all devices and hosts
      crop_samples=16000,
      # "crop": each crop scaled to -16 dBFS (the original); "utterance": the utterance scaled,
      # its crops at their level within it (README, "Step 1050, and silence").
      normalize="crop",
      num_workers=0,  # grain worker processes per host
      # Real speech evaluated at every validation, never trained on; skipped if absent.
      eval_folder=os.path.normpath(_SHARED_EVAL),
  ))

  config.log_every = 10
  config.eval_every = 500  # and at the end; 0 = never
  config.eval_batches = 8  # validation batches per evaluation (0 = the whole split)
  config.eval_crop_samples = 32000  # fixed validation crops (0 = whole utterances)
  config.eval_audio_samples = 3  # clips written to TensorBoard and disk per evaluation
  # PESQ (wide-band) and STOI of the real-speech clips at every evaluation (~0.3 s a clip).
  config.eval_quick_quality = True
  config.checkpoint_every = 500
  config.keep_checkpoints = 3  # the latest N, plus the best by validation SNR

  if arg in ("streaming", "streaming_smoke"):
    # Changes no parameter: a causal codec has the faithful one's parameter names and shapes.
    config.codec.causal = True
    arg = "smoke" if arg == "streaming_smoke" else None
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
  elif arg in ("demo", "lowrate_demo"):
    config.codec.update(sample_corpus.DEMO_CODEC)
    if arg == "lowrate_demo":
      config.codec.strides = (2, 2, 2, 4, 10)  # 50 frames/s, as `lowrate`
    config.discriminator.period_channels = (8, 16, 32, 64, 64)
    config.discriminator.stft_channels = 8
    config.data.batch_size = 8
    config.data.crop_samples = 8000
    config.num_epochs = 40  # 8 steps per epoch on the sample corpus: 320 steps
    # The recipe that learned fastest in the ablation (README, "Low-rate codec and the improved
    # recipe"): multi-scale mel loss, EMA codebooks initialised from data with dead codes
    # re-seeded, the straight-through gradient passed once, a 10x learning rate, DAC's betas.
    config.loss_weights.mel = 15.0
    config.vq.init_from_data = True
    config.vq.dead_code_threshold = 1.0
    config.codec.straight_through = "once"
    config.optimizer.update(learning_rate=1e-3, b1=0.8, b2=0.99)
    config.log_every = 20
    config.eval_every = 160
    config.checkpoint_every = 160
    config.eval_batches = 4
    if arg == "demo":
      # A reconstruction warm-up: 960 generator-only steps (~3.3x cheaper than GAN steps), then
      # 160 GAN steps; 140 epochs = 1120 steps (README: 0.347 validation mel distance against
      # 0.486 for 320 GAN steps, in 8.4 minutes). lowrate_demo keeps 320 GAN steps: the
      # conversation demo's measured results were made with it.
      config.num_epochs = 140
      config.adversarial_start_step = 960
      config.eval_every = 320
      config.checkpoint_every = 320
  elif arg in ("lowrate", "lowrate_hour", "lowrate_streaming"):
    # 50 frames/s (320 samples a frame: 16000 → 50 exactly) × 8 levels × 10 bits = 4 kbit/s,
    # decodable with the first k levels (0.5 … 4 kbit/s), with the improved recipe.
    config.codec.strides = (2, 2, 2, 4, 10)
    _improved_recipe(config)
    if arg == "lowrate_streaming":
      config.codec.causal = True
    if arg == "lowrate_hour":
      # EMA codebooks in the latent space (no factorised lookups), as the demo: their codes are
      # in use from the first step. A 1024-code row unused for ~70 steps is re-seeded.
      config.codec.codebook_dim = 0
      config.vq.init_from_data = True
      config.vq.dead_code_threshold = 0.1
      config.vq.reseed_count = 0.2
      # Dead rows of levels 4-7 split a used code (the deep levels' churn left 57 of 1024 dead);
      # a decoder that learned the waveform upside down is flipped (README: "Re-seeding by
      # splitting, and a decoder upside down").
      config.vq.reseed_split = 0.05
      config.vq.reseed_split_from_level = 4
      config.correct_polarity = True
      # The phase, which the mel loss ignores (SI-SDR), and the output's level, which SI-SDR
      # ignores (SNR); SI-SDR weight 1 saturated the full-size decoder's tanh within 20 steps.
      # Both measured in the README ("The level too").
      config.loss_weights.si_sdr = 0.1
      config.loss_weights.snr = 0.1
      config.codec.straight_through = "once"
      config.optimizer.update(learning_rate=3e-4, b1=0.8, b2=0.99)  # 1e-3 diverged at full size
      config.data.crop_samples = 8000
      config.adversarial_start_step = 1800
      config.log_every = 20
      config.eval_every = 300
      config.checkpoint_every = 300
  elif arg is not None:
    raise ValueError(f"unknown configs/codec.py variant {arg!r}: expected 'demo', 'lowrate', "
                     "'lowrate_demo', 'lowrate_hour', 'lowrate_streaming', 'smoke', 'streaming', "
                     "'streaming_smoke' or none")
  config.lock()
  return config
