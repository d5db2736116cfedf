"""Listening samples of an S2S model during training: generated answers decoded by a codec.

For each validation example: the question, the model's answer (sampled from the current
weights) and the reference answer, as 16 kHz WAVs and a spectrogram comparison (answer vs
reference) in `samples/step_N/`, and as TensorBoard audio.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import soundfile

from telugu_jax.evaluation import plots
from telugu_jax.inference import load_codec
from telugu_jax.inference.s2s import S2S
from telugu_jax.models.s2s import S2SConfig

SAMPLE_RATE = 16000


class SampleWriter:
  """Generates and writes answers for a few validation examples at each evaluation.

  Args:
    codec_checkpoint: a codec checkpoint or workdir whose codes the S2S model was trained on.
    model_config: the S2S model configuration.
    folder: where `step_N/` folders go.
    writer: a TensorBoard writer, or None.

  Raises:
    ValueError: the codec's levels or vocabulary differ from the S2S model's.
  """

  def __init__(self, codec_checkpoint: str, model_config: S2SConfig, folder: str, writer: Any):
    self.codec = load_codec(codec_checkpoint)
    if (self.codec.num_quantizers, self.codec.codebook_size) != (model_config.num_quantizers,
                                                                 model_config.vocab_size):
      raise ValueError(
          f"{codec_checkpoint}: the codec has {self.codec.num_quantizers} levels of "
          f"{self.codec.codebook_size} codes, the S2S model {model_config.num_quantizers} of "
          f"{model_config.vocab_size}")
    self.model_config, self.folder, self.writer = model_config, folder, writer

  def write(self, variables: dict, examples: list[dict[str, np.ndarray]], step: int,
            max_frames: int) -> None:
    s2s = S2S(self.model_config, variables)
    folder = os.path.join(self.folder, f"step_{step:07d}")
    os.makedirs(folder, exist_ok=True)
    for i, example in enumerate(examples):
      question = example["question"][:, :int(example["question_lengths"])]
      reference = example["answer"][:, :int(example["answer_lengths"])]
      codes, lengths = s2s.generate(question[None], int(example["speaker"]),
                                    int(example["emotion"]), max_frames=max_frames, seed=step)
      answer = codes[0, :, :int(lengths[0])]
      waves = {name: self._decode(codes) for name, codes in
               (("question", question), ("answer", answer), ("reference", reference))}
      for name, wave in waves.items():
        soundfile.write(os.path.join(folder, f"{i}_{name}.wav"), wave, SAMPLE_RATE)
        if self.writer is not None:
          self.writer.add_audio(f"sample_{i}/{name}", wave, step, sample_rate=SAMPLE_RATE)
      plots.spectrogram_comparison(waves["reference"], waves["answer"],
                                   os.path.join(folder, f"{i}_spectrogram.png"),
                                   title=f"step {step}, sample {i}",
                                   labels=("reference answer", "generated answer"))

  def _decode(self, codes: np.ndarray) -> np.ndarray:
    if codes.shape[-1] == 0:
      return np.zeros(0, np.float32)
    return np.clip(self.codec.decode(codes[None])[0], -1.0, 1.0)
