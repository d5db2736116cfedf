"""Inference wrapper (length buckets, masking), the code file format and the file CLI."""

import functools
import hashlib
import json
import struct
import types
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from conftest import load_tool

from configs import codec as codec_configs
from telugu_jax import checkpoints
from telugu_jax.data import audio
from telugu_jax.inference import codec as inference_codec
from telugu_jax.inference import codefile
from telugu_jax.models import codec as codec_lib
from telugu_jax.models.codec import Codec
from telugu_jax.train import codec as codec_trainer
from test_codec_parity import speechlike


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
  """A freshly initialised smoke codec saved the way the converter and trainer save it (the
  codec part of their state; an "rbg" key compiles its random bits in a third of the time)."""
  config = codec_configs.get_config("smoke")
  gen = codec_trainer.run_once(Codec(**config.codec).init, jax.random.key(0, impl="rbg"),
                               jnp.zeros((1, 4000)))
  path = str(tmp_path_factory.mktemp("ckpt") / "ckpt")
  checkpoints.save(path, 0, {"gen": gen}, checkpoints.model_meta("codec",
                                                                 codec=config.codec.to_dict()))
  return path, config, {"gen": gen}


def test_padded_buckets_and_batches_equal_unpadded_inputs(smoke_checkpoint):
  path, config, state = smoke_checkpoint
  codec = inference_codec.load_codec(path, bucket_seconds=0.5)
  model = Codec(**config.codec)
  variables = {"params": state["gen"]["params"], "vq": state["gen"]["vq"]}
  encode = jax.jit(functools.partial(model.apply, variables, method=Codec.encode))
  decode = jax.jit(functools.partial(model.apply, variables, method=Codec.decode))
  for length in (3001, 12345):  # padded to one bucket, and to two
    wave = speechlike(2, length, seed=length)
    expected = encode(jnp.asarray(wave))
    np.testing.assert_array_equal(codec.encode(wave), expected)
    np.testing.assert_allclose(codec.decode(np.asarray(expected)), decode(expected), atol=1e-5)
  # A row padded inside a batch (explicit lengths) matches the same row alone.
  long, short = speechlike(1, 8000, seed=1), speechlike(1, 5000, seed=2)
  batch = np.concatenate([long, np.pad(short, ((0, 0), (0, 3000)))])
  codes = encode(jnp.asarray(batch), jnp.array([8000, 5000]))
  alone = encode(jnp.asarray(short))
  np.testing.assert_array_equal(codes[1:, :, : alone.shape[2]], alone)


def test_bucket_lengths():
  assert [audio.bucket_length(n, 100) for n in (1, 100, 101, 151, 201, 301, 401)] == [
      100, 100, 150, 200, 300, 400, 600]
  assert [audio.bucket_length(n, 100, 4) for n in (1, 100, 101, 126, 151, 176, 201, 251, 1000)
          ] == [100, 100, 125, 150, 175, 200, 250, 300, 1000]
  with pytest.raises(ValueError, match="per_octave"):
    audio.bucket_length(5, 100, 0)
  # What a server compiles before it serves: every encode bucket up to the longest question.
  codec = inference_codec.CodecModel({}, {"params": {}})
  assert codec.encode_buckets(3.1) == [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5]
  assert codec.encode_buckets(0.2) == [1.0]
  coarse = inference_codec.CodecModel({}, {"params": {}}, bucket_seconds=0.5,
                                      buckets_per_octave=2)
  assert coarse.encode_buckets(2.0) == [0.5, 0.75, 1.0, 1.5, 2.0]


def test_config_hash_of_a_codec_from_before_the_upsample_option_holds():
  before = {k: v for k, v in codec_configs.get_config("lowrate").codec.to_dict().items()
            if k != "upsample"}
  # What code files have stored since the format began: sha256 of the sorted JSON of the kwargs.
  canonical = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in before.items()},
                         sort_keys=True)
  expected = hashlib.sha256(canonical.encode()).hexdigest()[:16]
  assert inference_codec.config_hash({**before, "upsample": "transposed"}) == expected
  assert inference_codec.config_hash({**before, "upsample": "resize"}) != expected


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
  with pytest.raises(codefile.CodeFileError, match="cut.tjc: checksum mismatch.*truncated"):
    codefile.read(str(tmp_path / "cut.tjc"))
  (tmp_path / "bad.tjc").write_bytes(b"RIFF....")
  with pytest.raises(codefile.CodeFileError, match="bad magic"):
    codefile.read(str(tmp_path / "bad.tjc"))
  np.testing.assert_array_equal(codefile.unpack(codefile.pack([0, 1, 5, 7], 3), 4, 3), [0, 1, 5, 7])


# A codec as `codefile.read` sees it: the default architecture makes 191 frames of 15300 samples.
FAKE_CODEC = types.SimpleNamespace(config_hash="abc", sample_rate=16000, num_quantizers=8,
                                   codebook_size=1024, num_frames=codec_lib.num_frames)
HEADER = {"sample_rate": 16000, "num_samples": 15300, "num_quantizers": 8, "num_frames": 191,
          "bits": 10, "config_hash": "abc", "source": "a.wav"}


def _raw_code_file(path, header, codes, version):
  """Writes a code file byte by byte as format `version` would hold `header` and `codes`."""
  encoded = json.dumps(header).encode()
  body = (struct.pack("<4sBI", b"TJXC", version, len(encoded)) + encoded
          + codefile.pack(codes, header["bits"]))
  path.write_bytes(body + (struct.pack("<I", zlib.crc32(body)) if version == 2 else b""))
  return str(path)


def test_code_file_checksum_catches_any_flipped_byte(tmp_path):
  codes = np.random.default_rng(1).integers(0, 1024, size=(8, 191)).astype(np.int32)
  path = tmp_path / "a.tjc"
  codefile.write(str(path), codefile.CodeFile(codes, 16000, 15300, "abc"), codebook_size=1024)
  np.testing.assert_array_equal(codefile.read(str(path), FAKE_CODEC).codes, codes)
  data = path.read_bytes()
  assert data[4] == 2 and b'"codebook_size": 1024' in data
  digit = data.index(b"15300") + 2  # the original length: 15300 -> 15200, still 191 frames
  for name, offset in (("digit", digit), ("payload", len(data) - 100)):
    flipped = bytearray(data)
    flipped[offset] ^= 0x01
    (tmp_path / f"{name}.tjc").write_bytes(bytes(flipped))
    with pytest.raises(codefile.CodeFileError, match=f"{name}.tjc: checksum mismatch"):
      codefile.read(str(tmp_path / f"{name}.tjc"))
  for version, pattern in ((1, r"unknown fields \['codebook_size'\]"),
                           (3, "format version 3; this reader knows 1, 2")):
    (tmp_path / "v.tjc").write_bytes(data[:4] + bytes([version]) + data[5:])
    with pytest.raises(codefile.CodeFileError, match=pattern):
      codefile.read(str(tmp_path / "v.tjc"))


def test_code_file_version_1_is_read_and_every_header_field_checked(tmp_path):
  codes = np.random.default_rng(2).integers(0, 1024, size=(8, 191)).astype(np.int32)
  back = codefile.read(_raw_code_file(tmp_path / "v1.tjc", HEADER, codes, 1), FAKE_CODEC)
  np.testing.assert_array_equal(back.codes, codes)
  assert (back.sample_rate, back.num_samples, back.source) == (16000, 15300, "a.wav")

  def fails(pattern, version=1, codec=None, data=codes, **changes):
    header = {**HEADER, **({"codebook_size": 1024} if version == 2 else {}), **changes}
    header = {k: v for k, v in header.items() if v is not None}  # None removes a field
    path = _raw_code_file(tmp_path / "x.tjc", header, data, version)
    with pytest.raises(codefile.CodeFileError, match=pattern):
      codefile.read(path, codec)

  fails(r"x.tjc: invalid header \(sample_rate -16000 is not an integer", sample_rate=-16000)
  fails(r"invalid header \(num_frames 191.0 is not an integer", num_frames=191.0)
  fails(r"invalid header \(num_samples True", num_samples=True)
  fails(r"invalid header \(bits 32 is not an integer in \[1, 31\]", bits=32)
  fails(r"missing fields \['num_quantizers'\], unknown fields \['num_quantisers'\]",
        num_quantizers=None, num_quantisers=8)
  fails(r"config_hash '' is not a non-empty string", config_hash="")
  fails("corrupted header .*NaN is not a JSON number", num_samples=float("nan"))
  fails("x.tjc: truncated or corrupted: 1910 bytes of codes, expected 1900", num_frames=190)
  fails("x.tjc: sample rate 22050 Hz in the header, the codec runs at 16000 Hz",
        codec=FAKE_CODEC, sample_rate=22050)
  fails("x.tjc: 191 frames in the header, but the codec makes 199 of the original 16000 samples",
        codec=FAKE_CODEC, num_samples=16000)
  fails("x.tjc: made by a codec with configuration hash 0123, this checkpoint's is abc",
        codec=FAKE_CODEC, config_hash="0123")
  fails("x.tjc: 11 bits per code in the header, the codec's codebook has 1024 codes \\(10 bits",
        codec=FAKE_CODEC, bits=11)
  fails("x.tjc: code 1023 outside the codec's codebook of 1000", data=codes * 0 + 1023,
        codec=types.SimpleNamespace(**{**vars(FAKE_CODEC), "codebook_size": 1000}))
  fails("x.tjc: 7 codebook levels in the header, the codec has 8", data=codes[:7],
        codec=FAKE_CODEC, num_quantizers=7)
  # Version 2 headers (checksum intact, as a faulty writer would make them):
  fails(r"invalid header \(9 bits per code do not fit a codebook of 1024: expected 10", 2,
        bits=9, data=codes // 2)
  fails("missing fields \\['codebook_size'\\]", 2, codebook_size=None)
  fails("x.tjc: corrupted codes: 1023 outside the codebook of 1000", 2, codebook_size=1000,
        data=codes * 0 + 1023)
  fails("x.tjc: codebook size 512, 9 bits per code in the header, the codec's codebook has 1024",
        2, codec=FAKE_CODEC, codebook_size=512, bits=9, data=codes // 2)
  with pytest.raises(ValueError, match=r"codes must lie in \[0, 1000\)"):
    codefile.write(str(tmp_path / "w.tjc"), codefile.CodeFile(codes, 16000, 15300, "abc"), 1000)
  with pytest.raises(codefile.CodeFileError, match="w.tjc: invalid header \\(num_frames 0"):
    codefile.write(str(tmp_path / "w.tjc"), codefile.CodeFile(codes[:, :0], 16000, 1, "abc"), 1024)
  assert not list(tmp_path.glob("w.tjc*"))


def test_file_cli_encodes_and_decodes_a_folder(smoke_checkpoint, tmp_path, capsys):
  path, config, state = smoke_checkpoint
  cli = load_tool("codec_files")
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
