"""Building blocks and losses against PyTorch, librosa and hand-computed values."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import torch
from conftest import relative_error

from telugu_jax import losses
from telugu_jax.evaluation import metrics
from telugu_jax.models import codec as codec_lib
from telugu_jax.models import layers
from telugu_jax.train import codec as codec_trainer


@pytest.mark.parametrize("n_fft", [512, 2048])
def test_stft_matches_torch(n_fft):
  x = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32)
  expected = torch.stft(torch.from_numpy(x), n_fft, n_fft // 4, window=torch.hann_window(n_fft),
                        center=True, pad_mode="reflect", return_complex=True).numpy()
  actual = np.asarray(layers.stft(jnp.asarray(x), n_fft, n_fft // 4))
  assert actual.shape == expected.transpose(0, 2, 1).shape
  assert relative_error(actual, expected.transpose(0, 2, 1)) < 1e-5


def test_snake_has_no_epsilon_and_matches_formula():
  x = jnp.linspace(-3, 3, 12).reshape(1, 4, 3)
  alpha = jnp.array([0.5, 1.0, 2.0])
  y = layers.Snake().apply({"params": {"alpha": alpha}}, x)
  np.testing.assert_allclose(y, x + np.sin(alpha * x) ** 2 / alpha, rtol=1e-6)


def test_transposed_conv_matches_torch_lengths_and_values():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 7, 3)).astype(np.float32)  # [B, T, C]
  for kernel, stride, padding in [(10, 5, 2), (4, 2, 1)]:
    conv = torch.nn.ConvTranspose1d(3, 5, kernel, stride, padding)
    expected = conv(torch.from_numpy(x.transpose(0, 2, 1))).detach().numpy().transpose(0, 2, 1)
    params = {"weight": conv.weight.detach().numpy(), "bias": conv.bias.detach().numpy()}
    actual = layers.ConvTranspose1d(5, kernel, stride, padding).apply({"params": params}, x)
    assert actual.shape == expected.shape == (2, (7 - 1) * stride - 2 * padding + kernel, 5)
    assert relative_error(actual, expected) < 1e-5


@pytest.mark.parametrize("stride", [2, 4, 10])
def test_resize_conv_is_nearest_upsampling_then_convolution(stride):
  """`resize=True`: by hand, repeat each input step `stride` times, correlate with the taps
  reversed (a true convolution), divide by the stride; a steady input gives a steady output."""
  kernel, padding = 2 * stride, stride // 2
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 6, 3)).astype(np.float32)
  module = layers.ConvTranspose1d(4, kernel, stride, padding, weight_norm=True, resize=True)
  params = module.init(jax.random.key(0), x)
  v = np.asarray(params["params"]["weight_v"])  # [in, out, stride + 1]
  assert v.shape == (3, 4, stride + 1)
  taps = np.asarray(layers.weight_norm(params["params"]["weight_g"], v))
  bias = np.asarray(params["params"]["bias"])
  upsampled = np.repeat(x, stride, axis=1)  # [B, 6 * stride, in]
  expected = np.zeros((2, 6 * stride, 4))
  for o in range(6 * stride):
    for m in range(stride + 1):
      n = o - m + padding
      if 0 <= n < upsampled.shape[1]:
        expected[:, o] += upsampled[:, n] @ taps[:, :, m]
  expected = expected / stride + bias
  actual = module.apply(params, x)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

  steady = module.apply(params, np.ones((1, 6, 3), np.float32))[0]
  interior = steady[stride:-stride]  # away from the zero padding at either end
  np.testing.assert_allclose(interior, np.broadcast_to(interior[:1], interior.shape), atol=1e-5)
  free = layers.ConvTranspose1d(4, kernel, stride, padding, weight_norm=True)
  periodic = free.apply(free.init(jax.random.key(0), x), np.ones((1, 6, 3), np.float32))[0]
  assert np.ptp(periodic[stride:-stride], axis=0).max() > 1e-2  # a free kernel's phases differ
  with pytest.raises(ValueError, match="resize needs a transposed conv"):
    layers._TorchLayoutConv(4, (3,), (1,), ((1, 1),), (1,), use_weight_norm=False,
                            resize=True).init(jax.random.key(0), x)


@pytest.mark.parametrize("make, shape", [
    (lambda: layers.Conv1d(6, 7, 1, 3, dilation=3, weight_norm=True), (2, 19, 4)),
    (lambda: layers.Conv1d(6, 4, 2, 1), (2, 20, 4)),  # a strided encoder conv
    (lambda: layers.ConvTranspose1d(5, 10, 5, 2, weight_norm=True), (2, 7, 4)),
    (lambda: layers.ConvTranspose1d(5, 4, 2, 1), (1, 9, 4)),
    (lambda: layers.ConvTranspose1d(5, 8, 4, 2, weight_norm=True, resize=True), (2, 7, 4)),
    (lambda: layers.Conv2d(5, (3, 9), (1, 2), (1, 4)), (2, 6, 17, 3)),  # the STFT discriminator's
])
def test_every_convolution_form_equals_xla_convolution(make, shape):
  """The CPU rewrites (im2col + matmul, matmul + overlap-add, space-to-depth) compute the same
  function and gradients as XLA's convolutions, on the same parameters."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  module = make()
  params = module.init(jax.random.key(1), x)

  def loss(params, x):
    return jnp.sum(jnp.tanh(module.apply(params, x)))

  results = {}
  for impl in ("xla", "rewrite"):
    with layers.conv_impl(impl):
      results[impl] = (jax.jit(module.apply)(params, x),
                       jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))
  for got, expected in zip(jax.tree.leaves(results["rewrite"]), jax.tree.leaves(results["xla"])):
    assert got.shape == expected.shape
    assert relative_error(got, expected) < 1e-5
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    with layers.conv_impl("fast"):
      pass


def test_matmul_gradient_form_equals_dot_general():
  """`layers.matmul`'s CPU backward (the weight gradient as a plain dot of a transposed copy:
  of `x` where K <= N, of the output gradient where K > N) gives the values and gradients of
  `lax.dot_general`."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 7)), jnp.float32)
  for n in (4, 9):  # K = 7 > N = 4: g^T is copied; K = 7 < N = 9: x^T is
    w = jnp.asarray(rng.standard_normal((7, n)), jnp.float32)

    def loss(x, w):
      return jnp.sum(jnp.tanh(layers.matmul(x, w)) * jnp.arange(float(n)))

    results = {}
    for impl in ("xla", "rewrite"):
      with layers.conv_impl(impl):
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        results[impl] = (jax.jit(layers.matmul)(x, w), grad(x, w))
        assert ("optimization_barrier" in grad.lower(x, w).as_text()) == (impl == "rewrite")
    assert relative_error(results["rewrite"][0], jnp.einsum("btk,kn->btn", x, w)) < 1e-6
    for got, expected in zip(jax.tree.leaves(results["rewrite"]), jax.tree.leaves(results["xla"])):
      assert got.shape == expected.shape
      assert relative_error(got, expected) < 1e-6, n


def test_sin_cos_is_correctly_rounded_and_snake_gradient_matches_the_formula():
  z = np.concatenate([np.linspace(-40, 40, 20001), np.random.default_rng(0).uniform(
      -2.0**19, 2.0**19, 20000)]).astype(np.float32)
  sin, cos = jax.jit(layers.sin_cos)(jnp.asarray(z))
  np.testing.assert_array_equal(sin, np.sin(z.astype(np.float64)).astype(np.float32))
  np.testing.assert_array_equal(cos, np.cos(z.astype(np.float64)).astype(np.float32))
  x, alpha = jnp.linspace(-3.0, 3.0, 13), jnp.float32(1.7)
  dx, dalpha = jax.grad(lambda x, a: jnp.sum(layers.snake(x, a)), argnums=(0, 1))(x, alpha)
  np.testing.assert_allclose(dx, 1 + np.sin(2 * alpha * x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      dalpha, np.sum(x * np.sin(2 * alpha * x) / alpha - np.sin(alpha * x) ** 2 / alpha**2),
      rtol=1e-5)


def test_weight_norm_initialises_g_to_the_norm_of_v():
  conv = layers.Conv1d(6, 3, weight_norm=True)
  params = conv.init(jax.random.key(0), jnp.zeros((1, 10, 4)))["params"]
  assert params["weight_g"].shape == (6, 1, 1) and params["weight_v"].shape == (6, 4, 3)
  np.testing.assert_allclose(layers.weight_norm(params["weight_g"], params["weight_v"]),
                             params["weight_v"], rtol=1e-6)


def test_lengths_follow_the_original_formulas():
  assert codec_lib.num_frames(16000) == 199
  assert codec_lib.num_frames(19200) == 239
  assert codec_lib.num_samples(239) == 19136
  assert codec_lib.num_samples(199) == 15936
  model = codec_lib.Codec(encoder_channels=(2, 2, 2, 2, 2), decoder_channels=(2,) * 6,
                          hidden_dim=4, codebook_size=4)
  audio = jnp.zeros((1, 19200))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), audio))
  codes = jax.eval_shape(lambda v: model.apply(v, audio, method=model.encode), variables)
  assert codes.shape == (1, 8, 239)
  decoded = jax.eval_shape(lambda v, c: model.apply(v, c, method=model.decode), variables, codes)
  assert decoded.shape == (1, 19136)


def test_ema_update_by_hand():
  cluster = jnp.array([1.0, 0.0])
  ema_w = jnp.array([[1.0, 1.0], [0.0, 2.0]])
  residual = jnp.array([[3.0, 1.0], [5.0, 1.0], [2.0, 2.0]])
  codes = jnp.array([0, 0, 1])
  new_cluster, new_w, codebook = codec_lib.ema_update(cluster, ema_w, residual, codes)
  np.testing.assert_allclose(new_cluster, [0.99 + 0.02, 0.01], rtol=1e-6)
  np.testing.assert_allclose(new_w, [[0.99 + 0.08, 0.99 + 0.02], [0.02, 1.98 + 0.02]], rtol=1e-6)
  n = 1.02
  size = (np.array([1.01, 0.01]) + 1e-5) / (n + 2e-5) * n
  np.testing.assert_allclose(codebook, np.asarray(new_w) / size[:, None], rtol=1e-5)


def test_hinge_losses_by_hand():
  real = [jnp.array([[2.0, 0.5]]), jnp.array([[-1.0]])]
  fake = [jnp.array([[-2.0, 0.0]]), jnp.array([[1.0]])]
  real_term, fake_term = losses.discriminator_hinge(real, fake)
  # relu(1 - real): [0, 0.5] → 0.25 and [2] → 2; mean over 2 discriminators.
  assert float(real_term) == pytest.approx((0.25 + 2.0) / 2)
  # relu(1 + fake): [0, 1] → 0.5 and [2] → 2.
  assert float(fake_term) == pytest.approx((0.5 + 2.0) / 2)
  # relu(1 - fake): [3, 1] → 2 and [0] → 0.
  assert float(losses.generator_adversarial(fake)) == pytest.approx(1.0)


def test_feature_matching_averages_over_pairs_not_elements():
  real = [[jnp.zeros((1, 4)), jnp.zeros((1, 2))]]
  fake = [[jnp.ones((1, 4)), 3 * jnp.ones((1, 2))]]
  assert float(losses.feature_matching(real, fake)) == pytest.approx((1.0 + 3.0) / 2)


def test_vq_loss_value_and_gradient_split():
  residual = jnp.array([[[1.0, 2.0]]])  # [n_q=1, N=1, D=2]
  codeword = jnp.array([[[0.0, 0.0]]])
  assert float(losses.vq_loss(residual, codeword)) == pytest.approx(1.25 * 2.5)
  g_res, g_code = jax.grad(losses.vq_loss, argnums=(0, 1))(residual, codeword)
  # Commitment (0.25 * mean sq) reaches the residual; the codebook term reaches the codeword.
  np.testing.assert_allclose(g_res, 0.25 * residual, rtol=1e-6)
  np.testing.assert_allclose(g_code, -residual, rtol=1e-6)


def test_multiscale_mel_matches_librosa():
  rng = np.random.default_rng(2)
  x, y = (0.3 * rng.standard_normal((1, 8000))).astype(np.float32), np.zeros((1, 8000), np.float32)
  y[:] = np.sin(np.arange(8000) * 0.05) * 0.3
  n_ffts, n_mels = (1024, 256), (80, 32)
  expected = []
  for n_fft, mels in zip(n_ffts, n_mels):
    log_mel = lambda s: np.log10(np.maximum(librosa.feature.melspectrogram(
        y=s[0], sr=16000, n_fft=n_fft, hop_length=n_fft // 4, n_mels=mels, power=1.0,
        center=True, pad_mode="reflect"), 1e-5))
    expected.append(np.mean(np.abs(log_mel(x) - log_mel(y))))
  actual = losses.multiscale_mel(jnp.asarray(x), jnp.asarray(y), n_ffts=n_ffts, n_mels=n_mels)
  assert float(actual) == pytest.approx(np.mean(expected), rel=1e-4)
  assert float(losses.multiscale_mel(jnp.asarray(x), jnp.asarray(x))) == 0.0


def test_mel_distance_counts_each_clips_own_frames():
  """Two clips of 5000 and 8000 samples padded to 12000: each clip's distance is librosa's over
  the `1 + 5000 // hop` (`8000 // hop`) frames it has alone, padding zeroed, not diluted by the
  frames of padding (which would give about 5/12 of it)."""
  rng = np.random.default_rng(3)
  lengths = np.array([5000, 8000])
  x = (0.3 * rng.standard_normal((2, 12000))).astype(np.float32)
  y = (np.sin(np.arange(12000) * 0.05) * 0.3 + 0.05 * x).astype(np.float32)
  x[0, 5000:] = 1.0  # garbage past the end, zeroed by the metric
  actual = np.asarray(metrics.mel_distance(jnp.asarray(x), jnp.asarray(y), jnp.asarray(lengths)))
  for clip, length in enumerate(lengths):
    keep = np.arange(12000) < length
    expected = []
    for n_fft, mels in zip((2048, 1024, 512, 256, 128), (128, 80, 64, 32, 16)):
      log_mel = lambda s: np.log10(np.maximum(librosa.feature.melspectrogram(
          y=s * keep, sr=16000, n_fft=n_fft, hop_length=n_fft // 4, n_mels=mels, power=1.0,
          center=True, pad_mode="reflect"), 1e-5))
      frames = 1 + length // (n_fft // 4)
      expected.append(np.mean(np.abs(log_mel(x[clip]) - log_mel(y[clip]))[:, :frames]))
    assert actual[clip] == pytest.approx(np.mean(expected), rel=1e-4)
  # The second clip's value is also its value alone, up to its last frames' zero padding.
  alone = float(losses.multiscale_mel(jnp.asarray(x[1:, :8000]), jnp.asarray(y[1:, :8000])))
  assert actual[1] == pytest.approx(alone, rel=0.05)


def test_negative_waveform_terms_by_hand():
  """Each estimate is 2 x its reference plus a zero-mean noise orthogonal to it, so its SI-SDR is
  10 log10(|2 y|^2 / |n|^2) and its SNR 10 log10(|y|^2 / |y + n|^2); each loss is minus the
  batch mean."""
  t = np.arange(4000)
  y = np.stack([np.sin(t * 0.03), np.cos(t * 0.011)]).astype(np.float64)
  y -= y.mean(axis=1, keepdims=True)
  noise = np.stack([np.sin(t * 0.2), np.sin(t * 0.37)])
  noise -= noise.mean(axis=1, keepdims=True)
  noise -= (np.sum(noise * y, axis=1) / np.sum(y * y, axis=1))[:, None] * y
  noise *= np.array([[0.5], [0.1]])
  energy = lambda a: np.sum(a ** 2, axis=1)
  expected_si_sdr = -np.mean(10 * np.log10(energy(2 * y) / energy(noise)))
  expected_snr = -np.mean(10 * np.log10(energy(y) / (energy(y) + energy(noise))))
  x = (2 * y + noise).astype(np.float32)
  reference = jnp.asarray(y.astype(np.float32))
  si_sdr = lambda estimate: float(losses.negative_waveform_db("si_sdr", estimate, reference))
  snr = lambda estimate: float(losses.negative_waveform_db("snr", estimate, reference))
  assert si_sdr(jnp.asarray(x)) == pytest.approx(expected_si_sdr, abs=1e-3)
  assert snr(jnp.asarray(x)) == pytest.approx(expected_snr, abs=1e-3)
  # SI-SDR ignores the estimate's level; the SNR is best at the reference's own level.
  assert si_sdr(jnp.asarray(0.1 * x)) == pytest.approx(expected_si_sdr, abs=1e-3)
  assert snr(jnp.asarray(0.5 * x)) < snr(jnp.asarray(x))


def test_generator_losses_rejects_unknown_weights():
  with pytest.raises(ValueError, match="generator loss weights"):
    losses.generator_losses(None, {}, ([], [[]]), ([], [[]]), {"adversarial": 1.0, "l2": 1.0})


def test_folded_weight_norm_gives_the_weight_normed_codec():
  """`fold_weight_norm` replaces each (weight_g, weight_v) pair by its weight; the codec run on
  the folded parameters encodes to the same codes and decodes to the same audio."""
  from configs import codec as codec_configs  # pylint: disable=import-outside-toplevel
  model = codec_lib.Codec(**codec_configs.get_config("smoke").codec)
  wave = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32) * 0.1)
  variables = codec_trainer.run_once(model.init, jax.random.key(0), wave)
  params = variables["params"]
  # Weight norm's g away from ||v||, so that the folded weight differs from v.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: 1.7 * x if path[-1].key == "weight_g" else x, params)
  folded = layers.fold_weight_norm(params)
  count = lambda tree, suffix: sum(jax.tree_util.keystr(p).endswith(f"['{suffix}']")
                                  for p, _ in jax.tree_util.tree_leaves_with_path(tree))
  assert count(params, "weight_v") == count(params, "weight_g") > 10
  assert count(folded, "weight_v") == count(folded, "weight_g") == 0
  assert count(folded, "weight") == count(params, "weight") + count(params, "weight_v")
  encode = jax.jit(lambda p, x: model.apply({**variables, "params": p}, x,
                                            method=codec_lib.Codec.encode))
  decode = jax.jit(lambda p, c: model.apply({**variables, "params": p}, c,
                                            method=codec_lib.Codec.decode))
  codes = encode(params, wave)
  np.testing.assert_array_equal(encode(folded, wave), codes)
  np.testing.assert_allclose(decode(folded, codes), decode(params, codes), atol=1e-5)
