"""A PyTorch reference of the original codec, discriminator and losses.

Written from `reference/original-system.md` (§1–§3), not from the JAX code, so that parity tests
compare two independent implementations. Channel widths are parameters only so gradient tests can
run small; the defaults are the original's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import weight_norm


class Snake(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.alpha = nn.Parameter(torch.ones(1, channels, 1))

  def forward(self, x):
    return x + (1.0 / self.alpha) * torch.sin(self.alpha * x) ** 2


class CausalConv1d(nn.Module):

  def __init__(self, cin, cout, k, stride=1, dilation=1):
    super().__init__()
    self.pad = (k - 1) * dilation
    self.conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation)

  def forward(self, x):
    return self.conv(F.pad(x, (self.pad, 0)))


class ResidualBlock(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.norm1 = nn.GroupNorm(1, c)
    self.snake1 = Snake(c)
    self.conv1 = CausalConv1d(c, c, 3)
    self.norm2 = nn.GroupNorm(1, c)
    self.snake2 = Snake(c)
    self.conv2 = nn.Conv1d(c, c, 1)

  def forward(self, x):
    h = self.conv1(self.snake1(self.norm1(x)))
    h = self.conv2(self.snake2(self.norm2(h)))
    return x + h


class Encoder(nn.Module):

  def __init__(self, ch=(32, 64, 128, 256, 512), hidden=1024):
    super().__init__()
    self.proj = weight_norm(nn.Conv1d(1, ch[0], 7, padding=3))
    self.encoder = nn.Sequential(
        weight_norm(nn.Conv1d(ch[0], ch[1], 4, 2, 1)), ResidualBlock(ch[1]),
        weight_norm(nn.Conv1d(ch[1], ch[2], 4, 2, 1)), ResidualBlock(ch[2]),
        weight_norm(nn.Conv1d(ch[2], ch[3], 4, 2, 1)), ResidualBlock(ch[3]),
        weight_norm(nn.Conv1d(ch[3], ch[4], 4, 2, 1)), ResidualBlock(ch[4]),
        weight_norm(nn.Conv1d(ch[4], hidden, 10, 5, 2)))

  def forward(self, x):
    return self.encoder(self.proj(x))


class Decoder(nn.Module):

  def __init__(self, ch=(512, 256, 128, 64, 32, 32), hidden=1024):
    super().__init__()
    self.proj = weight_norm(nn.Conv1d(hidden, ch[0], 7, padding=3))
    self.decoder = nn.Sequential(
        weight_norm(nn.ConvTranspose1d(ch[0], ch[1], 10, 5, 2)), ResidualBlock(ch[1]),
        weight_norm(nn.ConvTranspose1d(ch[1], ch[2], 4, 2, 1)), ResidualBlock(ch[2]),
        weight_norm(nn.ConvTranspose1d(ch[2], ch[3], 4, 2, 1)), ResidualBlock(ch[3]),
        weight_norm(nn.ConvTranspose1d(ch[3], ch[4], 4, 2, 1)), ResidualBlock(ch[4]),
        weight_norm(nn.ConvTranspose1d(ch[4], ch[5], 4, 2, 1)))
    self.final_conv = nn.Conv1d(ch[5], 1, 7, padding=3)

  def forward(self, z):
    return torch.tanh(self.final_conv(self.decoder(self.proj(z))))


class ResidualVQ(nn.Module):

  def __init__(self, dim=1024, codebook_size=1024, num_quantizers=8, decay=0.99):
    super().__init__()
    self.num_quantizers, self.codebook_size, self.decay = num_quantizers, codebook_size, decay
    self.codebooks = nn.Parameter(torch.randn(num_quantizers, codebook_size, dim) * 0.01)
    self.register_buffer("ema_cluster_size", torch.zeros(num_quantizers, codebook_size))
    self.register_buffer("ema_w", torch.randn(num_quantizers, codebook_size, dim) * 0.01)

  def forward(self, z):  # z [B, D, T]
    residual = z.transpose(1, 2)  # [B, T, D]
    quantized = torch.zeros_like(residual)
    codes, losses = [], []
    for q in range(self.num_quantizers):
      flat = residual.reshape(-1, residual.shape[-1])
      dist = torch.cdist(flat, self.codebooks[q])
      indices = dist.argmin(dim=-1)
      step = self.codebooks[q][indices].view_as(residual)
      losses.append(F.mse_loss(step, residual.detach()) + 0.25 * F.mse_loss(residual, step.detach()))
      if self.training:
        with torch.no_grad():
          onehot = F.one_hot(indices, self.codebook_size).type(flat.dtype)
          self.ema_cluster_size[q] = (self.decay * self.ema_cluster_size[q]
                                      + (1 - self.decay) * onehot.sum(0))
          self.ema_w[q] = self.decay * self.ema_w[q] + (1 - self.decay) * onehot.t() @ flat
          n = self.ema_cluster_size[q].sum()
          size = (self.ema_cluster_size[q] + 1e-5) / (n + self.codebook_size * 1e-5) * n
          self.codebooks.data[q] = self.ema_w[q] / size.unsqueeze(1)
      quantized = quantized + (residual + (step - residual).detach())
      codes.append(indices.view(residual.shape[0], -1))
      residual = residual - step.detach()
    return quantized.transpose(1, 2), torch.stack(codes, 1), torch.stack(losses).mean()


class TeluCodec(nn.Module):

  def __init__(self, hidden_dim=1024, codebook_size=1024, num_quantizers=8,
               encoder_channels=(32, 64, 128, 256, 512),
               decoder_channels=(512, 256, 128, 64, 32, 32)):
    super().__init__()
    self.encoder = Encoder(encoder_channels, hidden_dim)
    self.quantizer = ResidualVQ(hidden_dim, codebook_size, num_quantizers)
    self.decoder = Decoder(decoder_channels, hidden_dim)

  def encode(self, audio):
    return self.quantizer(self.encoder(audio))[1]

  def decode(self, codes):
    z = sum(self.quantizer.codebooks[q][codes[:, q]] for q in range(codes.shape[1]))
    return self.decoder(z.transpose(1, 2))

  def forward(self, audio):  # [B, 1, T]
    latent = self.encoder(audio)
    quantized, codes, vq_loss = self.quantizer(latent)
    out = self.decoder(quantized)
    length = audio.shape[-1]
    out = out[..., :length] if out.shape[-1] >= length else F.pad(out, (0, length - out.shape[-1]))
    recon_loss = F.l1_loss(out, audio)
    return {"audio": out, "codes": codes, "latent": latent, "vq_loss": vq_loss,
            "recon_loss": recon_loss, "loss": recon_loss + vq_loss}


class PeriodDiscriminator(nn.Module):

  def __init__(self, period, ch=(32, 128, 512, 1024, 1024)):
    super().__init__()
    self.period = period
    cin = [1] + list(ch[:-1])
    self.convs = nn.ModuleList(
        [weight_norm(nn.Conv2d(cin[i], ch[i], (5, 1), (3, 1), padding=(2, 0))) for i in range(4)]
        + [weight_norm(nn.Conv2d(ch[3], ch[4], (5, 1), 1, padding=(2, 0)))])
    self.conv_post = weight_norm(nn.Conv2d(ch[4], 1, (3, 1), 1, padding=(1, 0)))

  def forward(self, x):  # [B, 1, T]
    b, c, t = x.shape
    if t % self.period:
      n_pad = self.period - t % self.period
      x = F.pad(x, (0, n_pad), "reflect")
      t += n_pad
    x = x.view(b, c, t // self.period, self.period)
    features = []
    for conv in self.convs:
      x = F.leaky_relu(conv(x), 0.1)
      features.append(x)
    x = self.conv_post(x)
    features.append(x)
    return torch.flatten(x, 1, -1), features


class STFTDiscriminator(nn.Module):

  def __init__(self, n_fft, ch=32):
    super().__init__()
    self.n_fft, self.hop = n_fft, n_fft // 4
    self.register_buffer("window", torch.hann_window(n_fft))
    self.convs = nn.ModuleList([
        weight_norm(nn.Conv2d(3, ch, (3, 9), (1, 1), padding=(1, 4))),
        weight_norm(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
        weight_norm(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
        weight_norm(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
        weight_norm(nn.Conv2d(ch, ch, (3, 3), 1, padding=(1, 1)))])
    self.conv_post = weight_norm(nn.Conv2d(ch, 1, (3, 3), 1, padding=(1, 1)))

  def forward(self, x):  # [B, 1, T]
    spec = torch.stft(x.squeeze(1), self.n_fft, self.hop, self.n_fft, self.window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    x = torch.stack([spec.real, spec.imag, spec.abs()], dim=1)
    features = []
    for conv in self.convs:
      x = F.leaky_relu(conv(x), 0.1)
      features.append(x)
    x = self.conv_post(x)
    features.append(x)
    return torch.flatten(x, 1, -1), features


class MultiPeriodDiscriminator(nn.Module):

  def __init__(self, periods, ch):
    super().__init__()
    self.discriminators = nn.ModuleList([PeriodDiscriminator(p, ch) for p in periods])


class MultiSTFTDiscriminator(nn.Module):

  def __init__(self, n_ffts, ch):
    super().__init__()
    self.discriminators = nn.ModuleList([STFTDiscriminator(n, ch) for n in n_ffts])


class DACDiscriminator(nn.Module):

  def __init__(self, periods=(2, 3, 5, 7, 11), n_ffts=(2048, 1024, 512),
               period_channels=(32, 128, 512, 1024, 1024), stft_channels=32):
    super().__init__()
    self.mpd = MultiPeriodDiscriminator(periods, period_channels)
    self.msd = MultiSTFTDiscriminator(n_ffts, stft_channels)

  def forward(self, x):
    outs = [d(x) for d in list(self.mpd.discriminators) + list(self.msd.discriminators)]
    return [o[0] for o in outs], [o[1] for o in outs]


def discriminator_loss(real_logits, fake_logits):
  real = sum(torch.mean(F.relu(1 - d)) for d in real_logits) / len(real_logits)
  fake = sum(torch.mean(F.relu(1 + d)) for d in fake_logits) / len(fake_logits)
  return real + fake, real, fake


def generator_adversarial_loss(fake_logits):
  return sum(torch.mean(F.relu(1 - d)) for d in fake_logits) / len(fake_logits)


def feature_matching_loss(real_features, fake_features):
  pairs = [(r, f) for rs, fs in zip(real_features, fake_features) for r, f in zip(rs, fs)]
  return sum(F.l1_loss(f, r) for r, f in pairs) / len(pairs)


def generator_loss(codec_out, audio, disc, weights=(1.0, 10.0, 0.1, 1.0)):
  """The original generator objective: `1*adv + 10*feature_matching + 0.1*L1 + 1*vq`."""
  real_logits, real_features = disc(audio)
  fake_logits, fake_features = disc(codec_out["audio"])
  adv = generator_adversarial_loss(fake_logits)
  fm = feature_matching_loss(real_features, fake_features)
  l1 = F.l1_loss(codec_out["audio"], audio)
  total = weights[0] * adv + weights[1] * fm + weights[2] * l1 + weights[3] * codec_out["vq_loss"]
  return total, {"adversarial": adv, "feature_matching": fm, "l1": l1,
                 "vq": codec_out["vq_loss"]}


def make_optimizers(codec, disc, num_epochs=100):
  """The original's two AdamW optimizers and their per-epoch cosine schedulers."""
  opts = [torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.5, 0.9), eps=1e-8,
                            weight_decay=0.01) for m in (codec, disc)]
  scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=num_epochs) for o in opts]
  return opts, scheds


def train_step(codec, disc, gen_opt, disc_opt, audio):
  """One batch of the original trainer (float32, no GradScaler): returns (gen_loss, disc_loss)."""
  codec.eval()
  with torch.no_grad():
    fake = codec(audio)["audio"]
  disc_opt.zero_grad()
  disc_loss = discriminator_loss(disc(audio)[0], disc(fake)[0])[0]
  disc_loss.backward()
  torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
  disc_opt.step()

  codec.train()
  gen_opt.zero_grad()
  gen_loss, _ = generator_loss(codec(audio), audio, disc)
  gen_loss.backward()
  torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
  gen_opt.step()
  return float(gen_loss.detach()), float(disc_loss.detach())


def save_original_checkpoint(path, epoch, codec, disc, gen_opt, disc_opt, snr=None):
  """`torch.save` in the original trainer's format."""
  checkpoint = {"epoch": epoch, "codec_state_dict": codec.state_dict(),
                "discriminator_state_dict": disc.state_dict(),
                "gen_optimizer_state_dict": gen_opt.state_dict(),
                "disc_optimizer_state_dict": disc_opt.state_dict()}
  if snr is not None:
    checkpoint["snr"] = snr
  torch.save(checkpoint, path)
