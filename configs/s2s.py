"""S2S transformer training (speech codes in, speech codes out): the three stages.

    # Stage 1, audio language model on code shards of any Telugu speech
    # (`python tools/encode_corpus.py --checkpoint=CODEC --input='AUDIO_SHARDS' --output=codes/`):
    python -m telugu_jax.main --config=configs/s2s.py:pretrain --workdir=runs/s2s_pretrain \
        --config.data.train_shards='codes/train-*.arrayrecord' \
        --config.data.validation_shards='codes/validation-*.arrayrecord'
    # Stage 2, question -> answer on pair shards (`tools/make_conversations.py --codec=CODEC`):
    python -m telugu_jax.main --config=configs/s2s.py:conversation --workdir=runs/s2s_conversation \
        --config.init_from=runs/s2s_pretrain \
        --config.data.train_shards='pairs/codes/train-*.arrayrecord' \
        --config.data.validation_shards='pairs/codes/validation-*.arrayrecord'
    # Stage 3, speaker and emotion conditioning (style embeddings + the last decoder layers):
    python -m telugu_jax.main --config=configs/s2s.py:style --workdir=runs/s2s_style \
        --config.init_from=runs/s2s_conversation --config.data.train_shards=...
    # The demo: stage 1 on the bundled sample corpus's codes (a few minutes on 2 CPU cores):
    python -m telugu_jax.main --config=configs/s2s.py:demo --workdir=runs/s2s_demo

Variants (`configs/s2s.py:VARIANT`):
  pretrain      (also the default) stage 1: each example is one utterance cut at a random point;
                the encoder reads the part before the cut, the decoder predicts the rest.
  conversation  stage 2: question -> answer pairs.
  style         stage 3: pairs with speaker/emotion ids; only the style embeddings and the last
                `trainable.last_decoder_layers` decoder layers train.
  original      stage 2 with the original model exactly, defects included (for fine-tuning a
                converted original checkpoint: `--config.init_from=CONVERTED`;
                `--config.skip_unread_encoder=True` skips the encoder pass that only updates
                its BatchNorm statistics: the same parameters, a 1.3x faster step).
  demo          a small model, stage 1 on the bundled sample corpus (encoded once and cached).
  conversation_demo  the demo's model, stage 2 on the 50 Hz code pairs of the conversation demo
                (`python tools/conversation_demo.py`, which runs it), with decoder input noise,
                the answers' first frames weighted up and the auxiliary question CTC.
  smoke         a tiny model and a few steps, for tests (on the sample corpus's codes).

The model is the original's size (512 hidden, 8 heads, 6 + 6 layers, 1024 codes x 8 levels) with
its defects fixed and the delay pattern [0, 1, 1, 1, 1, 1, 1, 1]; `init_from` accepts the
previous stage's workdir or a converted original S2S checkpoint of the same size and variant.
Steps count micro-batches when `optimizer.accumulate_steps` > 1.
"""

import ml_collections

from telugu_jax.data import sample_corpus, transcripts
from telugu_jax.models.s2s import S2SConfig

STAGES = ("pretrain", "conversation", "style")


def _model(**overrides) -> ml_collections.ConfigDict:
  model = S2SConfig(**overrides)
  return ml_collections.ConfigDict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in model.to_dict().items()})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "pretrain"
  known = (*STAGES, "original", "demo", "conversation_demo", "smoke")
  if arg not in known:
    raise ValueError(f"unknown configs/s2s.py variant {arg!r}: expected one of {known}")
  config = ml_collections.ConfigDict()
  config.task = "s2s"
  config.stage = {"original": "conversation", "conversation_demo": "conversation",
                  "demo": "pretrain", "smoke": "pretrain"}.get(arg, arg)
  config.seed = 0
  # Resume order: the workdir's latest checkpoint, else this one (the previous stage's workdir or
  # a converted original S2S checkpoint: parameters and BatchNorm statistics only), else fresh.
  config.init_from = ""

  if arg == "original":
    config.model = _model(variant="original")
  else:
    config.model = _model(variant="fixed", delays=(0, 1, 1, 1, 1, 1, 1, 1))
  # Original variant only: skip the encoder's forward pass in training. The original's loss
  # never reads the encoder (defect 2), so parameters, optimizer state and loss are the same;
  # only its BatchNorm running statistics stay as loaded (PyTorch's train step updates them).
  config.skip_unread_encoder = False

  config.data = ml_collections.ConfigDict(dict(
      # Code shards (`tools/encode_corpus.py`) for "pretrain", pair shards
      # (`tools/make_conversations.py --codec`) for the other stages. Globs, comma-separated.
      train_shards="",
      validation_shards="",
      batch_size=16,  # global, over all devices and hosts
      # Frames per side; longer questions keep the frames nearest the answer (pretrain) or their
      # start (pairs); longer answers are cut at the end.
      max_question_frames=400,
      max_answer_frames=400,
      min_question_frames=20,  # pretrain: the shortest prefix the encoder reads
      # Batches are cut to the smallest multiple of this many frames that holds their longest
      # example (each width compiles once).
      bucket_frames=100,
      # 0, or batches of similar length: the examples of each run of this many batches are
      # sorted by length before they are batched (less padding; the batches come in random order).
      length_window=0,
      # With a question CTC head (model.question_ctc_vocab): the longest question transcript in
      # characters; longer ones (and truncated questions) train without it.
      max_text_tokens=200,
      num_workers=0,  # grain worker processes per host
  ))

  # AdamW with linear warm-up then cosine decay to `final_fraction` of the peak.
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=3e-4, warmup_steps=1000, final_fraction=0.1, b1=0.9, b2=0.98, eps=1e-8,
      weight_decay=0.01, clip_norm=1.0,
      accumulate_steps=1,  # gradient accumulation (optax.MultiSteps): micro-batches per update
  ))
  config.loss = ml_collections.ConfigDict(dict(
      label_smoothing=0.0,
      level_weights=(),  # one weight per codec level; empty = uniform (the original's mean)
      # The first `answer_start_frames` decoder positions weigh `answer_start_weight` times the
      # rest in each level's mean: where an answer starts is where the decoder must choose it from
      # the question, the rest follows from its own past. 0 frames = off (the original's mean).
      answer_start_frames=0,
      answer_start_weight=1.0,
      # Weight of the auxiliary CTC loss of the question CTC head (nats per transcript character)
      # added to the cross-entropy; 0 = off (the original's training). Needs
      # model.question_ctc_vocab = data.transcripts.VOCAB_SIZE and pair shards with transcripts.
      question_ctc_weight=0.0,
  ))
  # "all", or "style": only the style embeddings and the last `last_decoder_layers` decoder
  # layers (BatchNorm statistics then stay as loaded).
  config.trainable = ml_collections.ConfigDict(dict(parts="all", last_decoder_layers=2))
  # Training only: this fraction of the decoder's teacher-forced input codes is replaced by
  # random codes, so that the decoder cannot lean on the answer's own past alone and learns to
  # listen to the question (and to recover from its own mistakes). 0 = the original's training.
  config.decoder_input_noise = 0.0
  # Training only: this fraction of the examples gets all its decoder input codes replaced by
  # random codes: the answer must come from the question alone. 0 = the original's training.
  config.decoder_input_blank = 0.0
  config.compute_dtype = "float32"  # or "bfloat16" (parameters and losses stay float32)
  config.total_steps = {"pretrain": 100_000, "conversation": 20_000, "style": 5_000}[config.stage]

  config.log_every = 50
  config.eval_every = 1000  # and at the end; 0 = never
  config.eval_batches = 16  # validation batches per evaluation (0 = the whole split)
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3  # the latest N, plus the best by validation loss
  # A codec checkpoint (converted or a workdir) to turn a few validation answers into audio
  # at each evaluation (WAV + spectrogram in samples/ and TensorBoard); "" = no audio samples.
  config.codec_checkpoint = ""
  config.eval_samples = 2
  config.sample_max_frames = 400

  if config.stage == "style":
    config.trainable.parts = "style"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 200
  if arg == "original":
    config.optimizer.learning_rate = 1e-4
  if arg == "smoke":
    config.model = _model(variant="fixed", hidden_dim=64, num_heads=4, num_encoder_layers=2,
                          num_decoder_layers=2, ffn_dim=128, conv_kernel_size=7,
                          vocab_size=sample_corpus.DEMO_CODEC["codebook_size"], chunk_size=8,
                          lookahead=2, dropout=0.0,
                          delays=(0, 1, 1, 1, 1, 1, 1, 1))
    config.data.batch_size = 8
    config.data.max_question_frames = 24
    config.data.max_answer_frames = 24
    config.data.min_question_frames = 4
    config.data.bucket_frames = 8
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 10
    config.total_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.eval_batches = 2
    config.checkpoint_every = 3
    config.eval_samples = 1
    config.sample_max_frames = 16
  elif arg in ("demo", "conversation_demo"):
    config.model = _model(variant="fixed", hidden_dim=128, num_heads=4, num_encoder_layers=2,
                          num_decoder_layers=3, ffn_dim=512, conv_kernel_size=15,
                          vocab_size=sample_corpus.DEMO_CODEC["codebook_size"],
                          delays=(0, 1, 1, 1, 1, 1, 1, 1))
    config.data.batch_size = 16
    config.data.max_question_frames = 96
    config.data.max_answer_frames = 96
    config.data.bucket_frames = 48
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 50
    config.total_steps = 400
    config.log_every = 25
    config.eval_every = 200
    config.eval_batches = 4
    config.checkpoint_every = 200
    if arg == "conversation_demo":
      # The demo's model on 50 Hz codes of `configs/codec.py:lowrate_demo` (questions up to
      # ~5 s, answers up to ~6 s), trained from scratch on a few dozen question -> answer texts.
      config.data.update(max_question_frames=256, max_answer_frames=320, bucket_frames=64)
      # Twice the updates of batch 16 for the same examples: the small model learns more per
      # example (README "The conversation demo").
      config.data.batch_size = 8
      config.optimizer.warmup_steps = 100
      config.total_steps = 2500
      config.log_every = 50
      config.eval_every = config.checkpoint_every = 500
      config.sample_max_frames = 320
      config.decoder_input_noise = 0.1
      # Every training answer's level-0 codes differ from all others' by frame 19: these first
      # frames are where the question decides (README "The conversation demo").
      config.loss.answer_start_frames = 24
      config.loss.answer_start_weight = 3.0
      # The encoder also transcribes the question (auxiliary CTC): it learns what was said, not
      # who said it, and answers questions in unheard voices far more often (README).
      config.model.question_ctc_vocab = transcripts.VOCAB_SIZE
      config.loss.question_ctc_weight = 1.0
      config.data.max_text_tokens = 64  # the demo's longest question has 45 characters
  config.lock()
  return config
