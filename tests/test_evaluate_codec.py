"""Codec quality metrics (`evaluation/quality.py`), decoding fewer levels, and the report CLI."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from conftest import load_tool

from configs import codec as codec_configs
from telugu_jax import checkpoints
from telugu_jax.data import audio, records
from telugu_jax.data.sample_corpus import CORPUS_DIR
from telugu_jax.evaluation import quality
from telugu_jax.inference import codec as inference_codec
from telugu_jax.inference.postfilter import formant_postfilter, pitch_postfilter
from telugu_jax.models.codec import Codec

# Every test clip has this length: the signal metrics and the codec compile once for it, and
# DNSMOS (which repeats a clip up to 9 s) scores it in one window.
LENGTH = 38400


def _speech(voice: str, index: int) -> np.ndarray:
  """2.4 s of the bundled Telugu sample corpus, level-normalised as the codec sees it."""
  path = os.path.join(CORPUS_DIR, f"espeak_te_{voice}", f"espeak_te_{voice}_{index:03d}.flac")
  return audio.normalize_rms(audio.load_audio(path)[:LENGTH])


def _with_noise(wave: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
  """`wave` plus white noise scaled to exactly `snr_db` below the wave's power."""
  noise = np.random.default_rng(seed).standard_normal(wave.size)
  noise *= np.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise ** 2)
                   / 10 ** (snr_db / 10))
  return (wave + noise).astype(np.float32)


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
  """A random smoke-config codec saved as a converted checkpoint holds it (no discriminator).

  The variables are drawn directly in the shapes `init` would give (compiling `init` costs
  about 20 CPU seconds): normal weights, and Snake's `alpha` at its initial 1 (it divides).
  """
  config = codec_configs.get_config("smoke")
  shapes = jax.eval_shape(Codec(**config.codec).init, jax.random.key(0), jnp.zeros((1, 4000)))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda key, s: np.ones(s.shape, s.dtype) if key[-1].key == "alpha"
      else rng.standard_normal(s.shape).astype(s.dtype), shapes)
  path = str(tmp_path_factory.mktemp("ckpt") / "ckpt")
  checkpoints.save(path, 0, {"gen": variables}, {"task": "codec",
                                                 "codec": config.codec.to_dict()})
  return path, config, variables


def test_identical_signals_score_perfectly():
  clean = _speech("f2", 21)
  scores = quality.clip_quality(clean, clean.copy(), metrics=("pesq", "stoi", "visqol"))
  assert scores["pesq"] > 4.5  # PESQ-WB tops out at 4.64.
  assert scores["stoi"] > 0.999 and scores["estoi"] > 0.999
  assert scores["visqol"] > 4.3
  assert scores["si_sdr"] > 80 and scores["snr"] > 80
  assert scores["mel_distance"] == pytest.approx(0.0, abs=1e-6)


def test_noise_lowers_every_score_and_si_sdr_recovers_the_snr():
  clean = _speech("f2", 21)
  sweep = {snr: quality.clip_quality(clean, _with_noise(clean, snr), metrics=("pesq", "stoi",
                                                                            "visqol"))
           for snr in (30, 20, 10)}
  for snr, scores in sweep.items():
    # White noise is nearly orthogonal to the speech, so SI-SDR ≈ SNR.
    assert scores["si_sdr"] == pytest.approx(snr, abs=0.5)
    assert scores["snr"] == pytest.approx(snr, abs=0.01)
  for better, worse in ((30, 20), (20, 10)):
    for higher in ("pesq", "stoi", "estoi", "visqol", "si_sdr", "snr"):
      assert sweep[better][higher] > sweep[worse][higher], (higher, better, worse)
    assert sweep[better]["mel_distance"] < sweep[worse]["mel_distance"]

  clean_mos, noisy_mos = quality.dnsmos(clean), quality.dnsmos(_with_noise(clean, 5))
  assert set(clean_mos) == {"ovrl", "sig", "bak", "p808"}
  assert all(1.0 <= v <= 5.0 for v in (*clean_mos.values(), *noisy_mos.values()))
  assert noisy_mos["bak"] < clean_mos["bak"] - 0.5 and noisy_mos["ovrl"] < clean_mos["ovrl"]


def test_quick_quality_and_undefined_scores():
  clean = _speech("m1", 0)
  noisy = _with_noise(clean, 15)
  scores = quality.quick_quality(clean, noisy, 16000)
  assert scores == {"pesq": quality.pesq_wb(clean, noisy), "stoi": quality.stoi(clean, noisy)}
  # At another rate the waves are resampled to 16 kHz first.
  resampled = quality.quick_quality(audio.resample(clean, 16000, 24000),
                                    audio.resample(noisy, 16000, 24000), 24000)
  assert resampled["pesq"] == pytest.approx(scores["pesq"], abs=0.1)
  assert resampled["stoi"] == pytest.approx(scores["stoi"], abs=0.01)
  # Too little speech: PESQ, STOI and ViSQOL are undefined, not errors.
  short = clean[:3000]
  assert np.isnan(quality.pesq_wb(np.zeros(16000), np.zeros(16000)))
  assert np.isnan(quality.stoi(short, short))
  assert np.isnan(quality.visqol_speech(short, short))
  with pytest.raises(ValueError, match="unknown metrics"):
    quality.columns(["pesq", "polqa"])


def test_decode_with_fewer_levels_sums_only_those_codebooks(smoke_checkpoint):
  path, config, variables = smoke_checkpoint
  codec = inference_codec.load_codec(path)
  codes = codec.encode(_speech("m1", 0)[None])
  full = codec.decode(codes)
  np.testing.assert_array_equal(codec.decode(codes, levels=config.codec.num_quantizers), full)
  four = codec.decode(codes, levels=4)
  assert four.shape == full.shape and not np.allclose(four, full, atol=1e-3)
  # The same as decoding all levels with the codebooks of levels 4..7 zeroed.
  codebooks = variables["params"]["quantizer"]["codebooks"].copy()
  codebooks[4:] = 0.0
  codec.variables = {**variables, "params": {**variables["params"], "quantizer": {
      **variables["params"]["quantizer"], "codebooks": codebooks}}}
  np.testing.assert_allclose(four, codec.decode(codes), atol=1e-5)
  with pytest.raises(ValueError, match="levels must lie in"):
    codec.decode(codes, levels=0)


def test_cli_writes_the_report_and_skips_broken_clips(smoke_checkpoint, tmp_path, capsys):
  path, config, _ = smoke_checkpoint
  clips = tmp_path / "clips"
  (clips / "sub").mkdir(parents=True)
  soundfile.write(clips / "sub" / "a.wav", 0.3 * _speech("f2", 21), 16000)
  (clips / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
  with records.ShardWriter(clips / "eval-00000-of-00001.arrayrecord") as writer:
    writer.write(records.encode_record({"pcm": audio.float_to_pcm16(0.1 * _speech("m1", 0))},
                                       {"kind": "audio", "key": "m1_000"}))
    writer.write(b"not a record")
  output = tmp_path / "report"

  assert load_tool("evaluate_codec").main([
      f"--checkpoint={path}", f"--clips={clips}", f"--output={output}", "--levels=4",
      "--num_samples=1"]) == 0
  captured = capsys.readouterr()
  assert "evaluated 2 clips" in captured.out
  assert "broken.wav" in captured.err and "eval-00000-of-00001.arrayrecord#1" in captured.err

  with open(output / "per_clip.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["clip"] for r in rows] == ["eval-00000-of-00001.arrayrecord#0", "sub/a.wav"]
  assert list(rows[0]) == ["clip", "seconds", "si_sdr", "snr", "mel_distance", "pesq", "stoi",
                           "estoi", "visqol", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak",
                           "dnsmos_p808", "input_dnsmos_ovrl"]
  assert all(float(r["seconds"]) == pytest.approx(2.4) for r in rows)
  assert all(np.isfinite(float(r[c])) for r in rows for c in ("pesq", "stoi", "dnsmos_ovrl"))

  summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
  assert summary["num_clips"] == 2 and summary["levels"] == 4
  assert summary["bitrate_bps"] == pytest.approx(4 * 5 * 200)  # 4 levels × log2(32) × 200 Hz
  assert summary["metrics"]["pesq"]["count"] == 2
  assert summary["metrics"]["pesq"]["mean"] == pytest.approx(
      np.mean([float(r["pesq"]) for r in rows]), abs=1e-4)
  assert len(summary["codebook_usage"]["perplexity"]) == config.codec.num_quantizers
  assert sorted(s["clip"] for s in summary["skipped"]) == [
      "broken.wav", "eval-00000-of-00001.arrayrecord#1"]

  report = (output / "report.md").read_text(encoding="utf-8")
  assert "| PESQ wide-band ↑ |" in report and "4 levels = 4.00 kbps" in report
  assert "broken.wav" in report and "(not decoded)" in report
  sample = summary["samples"][0]
  for key in ("original", "reconstruction", "spectrogram"):
    assert (output / sample[key]).stat().st_size > 0
  assert soundfile.info(output / sample["reconstruction"]).duration == pytest.approx(2.4)
  assert (output / "metrics.png").exists() and (output / "codebook_usage.png").exists()


def test_cli_scores_the_post_filtered_decode_when_asked(smoke_checkpoint, tmp_path):
  path, _, _ = smoke_checkpoint
  wave = _speech("f2", 21)
  soundfile.write(tmp_path / "a.wav", wave, 16000, subtype="FLOAT")
  output = tmp_path / "report"
  assert load_tool("evaluate_codec").main([
      f"--checkpoint={path}", f"--clips={tmp_path / 'a.wav'}", f"--output={output}",
      "--metrics=", "--num_samples=0", "--postfilter=formant,pitch"]) == 0
  summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
  assert summary["postfilter"] == ["pitch", "formant"]
  assert "then the post-filters: pitch, formant" in (output / "report.md").read_text(
      encoding="utf-8")
  recon = inference_codec.load_codec(path).reconstruct(audio.normalize_rms(wave))[0]
  expected = quality.clip_quality(audio.normalize_rms(wave),
                                  formant_postfilter(pitch_postfilter(recon)), 16000, [])
  unfiltered = quality.clip_quality(audio.normalize_rms(wave), recon, 16000, [])
  assert summary["metrics"]["snr"]["mean"] == pytest.approx(expected["snr"], abs=1e-3)
  assert abs(expected["snr"] - unfiltered["snr"]) > 1e-3
  with pytest.raises(SystemExit):  # argparse's error: "post-filters are pitch, formant ..."
    load_tool("evaluate_codec").main([f"--checkpoint={path}", f"--clips={tmp_path / 'a.wav'}",
                                      f"--output={output}", "--postfilter=tilt"])
