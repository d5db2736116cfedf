"""Telugu audio data: decoding, shards, grain pipelines, TFDS builders, the sample corpus.

Modules
  audio          decode any WAV/FLAC/MP3/OGG to 16 kHz mono; the original's RMS -16 dB rule.
  records        the ArrayRecord record format (audio, code and pair records) and writers.
  shards         folder/manifest -> ArrayRecord audio shards (behind tools/build_shards.py).
  pipelines      grain iterators for codec training/validation and the S2S trainer.
  sample_corpus  the bundled synthetic Telugu corpus and its cached shards.
  report         hours per source/speaker, duration and level statistics, histograms.
  tfds_builders  TensorFlow Datasets builders for six Telugu corpora (no TensorFlow needed).
"""
