"""Inference wrapper (length buckets, masking), the code file format and the file CLI."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from configs import codec as codec_configs
from telugu_jax import checkpoints
from telugu_jax.data import audio
from telugu_jax.inference import codec as inference_codec
from telugu_jax.inference import codefile
from telugu_jax.models.codec import Codec
from telugu_jax.train import codec as codec_trainer
from test_codec_parity import speechlike

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
  """A fresh smoke-config GAN state saved the way the converter and trainer save it."""
  config = codec_configs.get_config("smoke")
  state = codec_trainer.init_state(config, jax.random.key(0), num_samples=4000)
  path = str(tmp_path_factory.mktemp("ckpt") / "ckpt")
  checkpoints.save(path, 0, state, {"task": "codec", "codec": config.codec.to_dict(),
                                      "discriminator": config.discriminator.to_dict()})
  return path, config, state


def test_padded_buckets_and_batches_equal_unpadded_inputs(smoke_checkpoint):
  path, config, state = smoke_checkpoint
  codec = inference_codec.load_codec(path, bucket_seconds=0.5)
  model = Codec(**config.codec)
  variables = {"params": state["gen"]["params"], "vq": state["gen"]["vq"]}
  for length in (3001, 8000, 12345):
    wave = speechlike(2, length, seed=length)
    expected = model.apply(variables, jnp.asarray(wave), method=Codec.encode)
    np.testing.assert_array_equal(codec.encode(wave), expected)
    decoded = model.apply(variables, expected, method=Codec.decode)
    np.testing.assert_allclose(codec.decode(np.asarray(expected)), decoded, atol=1e-5)
  # A row padded inside a batch (explicit lengths) matches the same row alone.
  long, short = speechlike(1, 8000, seed=1), speechlike(1, 5000, seed=2)
  batch = np.concatenate([long, np.pad(short, ((0, 0), (0, 3000)))])
  codes = model.apply(variables, jnp.asarray(batch), jnp.array([8000, 5000]), method=Codec.encode)
  alone = model.apply(variables, jnp.asarray(short), method=Codec.encode)
  np.testing.assert_array_equal(codes[1:, :, : alone.shape[2]], alone)


def test_bucket_lengths():
  assert [audio.bucket_length(n, 100) for n in (1, 100, 101, 151, 201, 301, 401)] == [
      100, 100, 150, 200, 300, 400, 600]


def test_code_file_round_trip_and_errors(tmp_path):
  codes = np.random.default_rng(0).integers(0, 1024, size=(8, 77)).astype(np.int32)
  path = str(tmp_path / "a.tjc")
  codefile.write(path, codefile.CodeFile(codes, 16000, 15300, "abc", "a.wav"), codebook_size=1024)
  size = (tmp_path / "a.tjc").stat().st_size
  back = codefile.read(path)
  np.testing.assert_array_equal(back.codes, codes)
  assert (back.sample_rate, back.num_samples, back.config_hash, back.source) == (
      16000, 15300, "abc", "a.wav")
  header = size - 8 * 77 * 10 // 8
  assert header < 200  # 10 bits per code: 770 bytes of codes, not 1232 as uint16
  (tmp_path / "cut.tjc").write_bytes((tmp_path / "a.tjc").read_bytes()[:-5])
  with pytest.raises(codefile.CodeFileError, match="cut.tjc: truncated"):
    codefile.read(str(tmp_path / "cut.tjc"))
  (tmp_path / "bad.tjc").write_bytes(b"RIFF....")
  with pytest.raises(codefile.CodeFileError, match="bad magic"):
    codefile.read(str(tmp_path / "bad.tjc"))
  np.testing.assert_array_equal(codefile.unpack(codefile.pack([0, 1, 5, 7], 3), 4, 3), [0, 1, 5, 7])


def _tool(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_file_cli_encodes_and_decodes_a_folder(smoke_checkpoint, tmp_path, capsys):
  path, config, state = smoke_checkpoint
  cli = _tool("codec_files")
  clips = tmp_path / "clips"
  (clips / "sub").mkdir(parents=True)
  mono = speechlike(1, 16000, seed=5)[0]
  soundfile.write(clips / "mono.wav", mono, 16000)
  stereo = np.stack([speechlike(1, 22050, seed=6)[0]] * 2, axis=1)
  soundfile.write(clips / "sub" / "stereo.flac", stereo, 22050)
  (clips / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")

  assert cli.main(["encode", str(clips), str(tmp_path / "codes"), f"--checkpoint={path}"]) == 1
  captured = capsys.readouterr()
  assert "encoded 2 of 3 files" in captured.out and "broken.wav" in captured.err
  stereo_codes = codefile.read(str(tmp_path / "codes" / "sub" / "stereo.tjc"))
  assert stereo_codes.num_samples == 16000 and stereo_codes.codes.shape == (8, 199)

  assert cli.main(["decode", str(tmp_path / "codes"), str(tmp_path / "wav"),
                   f"--checkpoint={path}"]) == 0
  decoded, rate = soundfile.read(tmp_path / "wav" / "mono.wav")
  assert rate == 16000 and decoded.shape == (16000,)
  codec = inference_codec.load_codec(path)
  expected = codec.reconstruct(mono[None])[0]
  np.testing.assert_allclose(decoded, expected, atol=1.5 / 32768)  # 16-bit PCM rounding

  other = codefile.read(str(tmp_path / "codes" / "mono.tjc"))
  codefile.write(str(tmp_path / "other.tjc"),
                 codefile.CodeFile(other.codes, 16000, 16000, "0" * 16), codebook_size=32)
  assert cli.main(["decode", str(tmp_path / "other.tjc"), str(tmp_path / "o.wav"),
                   f"--checkpoint={path}"]) == 1
  assert "configuration hash" in capsys.readouterr().err
