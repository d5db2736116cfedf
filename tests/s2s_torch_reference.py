"""A PyTorch reference of the original S2S transformer (`s2s_transformer.py`).

Written from `reference/original-system.md` §4 and §6, not from the JAX code, so that parity tests
compare two independent implementations. It keeps every defect of the original: no rotary
position is applied, the decoder's "cross-attention" attends over the decoder stream itself with no
mask, the conv module's residual is added twice and `layer_scale` multiplies the whole stream.
Sizes are constructor arguments only so tests can run small; the defaults are the original's.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class S2SConfig:
  hidden_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  ffn_dim: int = 2048
  conv_kernel_size: int = 31
  conv_expansion: int = 2
  chunk_size: int = 20
  lookahead: int = 4
  vocab_size: int = 1024
  num_quantizers: int = 8
  max_seq_len: int = 4096
  num_speakers: int = 4
  num_emotions: int = 9
  dropout: float = 0.1


class RotaryEmbedding(nn.Module):
  """Holds `inv_freq` like the original; the original never applies it (defect 1)."""

  def __init__(self, dim):
    super().__init__()
    self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))


class MultiHeadAttention(nn.Module):

  def __init__(self, dim, heads, dropout):
    super().__init__()
    self.heads, self.head_dim = heads, dim // heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.out = nn.Linear(dim, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x, mask=None, kv_cache=None):
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, T, hd]
    if kv_cache is not None:
      k = torch.cat([kv_cache[0], k], dim=2)
      v = torch.cat([kv_cache[1], v], dim=2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
    if mask is not None:
      scores = scores.masked_fill(mask == 0, -1e9)
    attn = self.dropout(torch.softmax(scores, dim=-1))
    out = (attn @ v).transpose(1, 2).reshape(b, t, d)
    return self.out(out), (k, v)


class ConvModule(nn.Module):

  def __init__(self, dim, kernel, expansion, dropout):
    super().__init__()
    inner = dim * expansion
    self.layer_norm = nn.LayerNorm(dim)
    self.pointwise_conv1 = nn.Linear(dim, 2 * inner)
    self.depthwise_conv = nn.Conv1d(inner, inner, kernel, padding=kernel // 2, groups=inner)
    self.norm = nn.BatchNorm1d(inner)
    self.pointwise_conv2 = nn.Linear(inner, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    residual = x
    x, gate = self.pointwise_conv1(self.layer_norm(x)).chunk(2, dim=-1)
    x = F.silu(self.norm(self.depthwise_conv(x.transpose(1, 2)))).transpose(1, 2)
    x = self.dropout(self.pointwise_conv2(x * torch.sigmoid(gate)))
    return residual + x  # defect 3: the block adds the residual again


def _ffn(dim, ffn_dim, dropout):
  return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Dropout(dropout),
                       nn.Linear(ffn_dim, dim), nn.Dropout(dropout))


class ConformerBlock(nn.Module):

  def __init__(self, c: S2SConfig):
    super().__init__()
    d = c.hidden_dim
    self.ffn1 = _ffn(d, c.ffn_dim, c.dropout)
    self.attn_norm = nn.LayerNorm(d)
    self.self_attn = MultiHeadAttention(d, c.num_heads, c.dropout)
    self.conv = ConvModule(d, c.conv_kernel_size, c.conv_expansion, c.dropout)
    self.ffn2 = _ffn(d, c.ffn_dim, c.dropout)
    self.layer_scale = nn.Parameter(torch.ones(d) * 0.1)

  def forward(self, x):
    x = x + 0.5 * self.ffn1(x)
    x = x + self.self_attn(self.attn_norm(x))[0]
    x = x + self.conv(x)
    x = x + 0.5 * self.ffn2(x)
    return x * self.layer_scale


class DecoderBlock(nn.Module):

  def __init__(self, c: S2SConfig):
    super().__init__()
    d = c.hidden_dim
    self.ln1 = nn.LayerNorm(d)
    self.self_attn = MultiHeadAttention(d, c.num_heads, c.dropout)
    self.ln2 = nn.LayerNorm(d)
    self.cross_attn = MultiHeadAttention(d, c.num_heads, c.dropout)
    self.ln3 = nn.LayerNorm(d)
    self.ffn = nn.Sequential(nn.Linear(d, c.ffn_dim), nn.GELU(), nn.Dropout(c.dropout),
                             nn.Linear(c.ffn_dim, d), nn.Dropout(c.dropout))

  def forward(self, x, encoder_out, self_mask=None, kv_cache=None):
    a, new_cache = self.self_attn(self.ln1(x), self_mask, kv_cache)
    x = x + a
    # Defect 2: the encoder output is never read; q, k and v all come from the decoder stream.
    x = x + self.cross_attn(self.ln2(x))[0]
    x = x + self.ffn(self.ln3(x))
    return x, new_cache


class StyleEmbedding(nn.Module):

  def __init__(self, c: S2SConfig):
    super().__init__()
    d = c.hidden_dim
    self.emotion_embed = nn.Embedding(c.num_emotions, d)
    self.speaker_embed = nn.Embedding(c.num_speakers, d)
    self.style_mix = nn.Sequential(nn.Linear(2 * d, d), nn.LayerNorm(d), nn.GELU(),
                                   nn.Dropout(c.dropout))

  def forward(self, speaker_id, emotion_id):
    return self.style_mix(torch.cat([self.emotion_embed(emotion_id),
                                     self.speaker_embed(speaker_id)], dim=-1))


class S2STransformer(nn.Module):

  def __init__(self, c: S2SConfig = S2SConfig()):
    super().__init__()
    self.config = c
    d = c.hidden_dim
    self.token_embed = nn.ModuleList(
        nn.Embedding(c.vocab_size, d // c.num_quantizers) for _ in range(c.num_quantizers))
    self.style_embed = StyleEmbedding(c)
    self.rope = RotaryEmbedding(d // c.num_heads)
    self.encoder_layers = nn.ModuleList(ConformerBlock(c) for _ in range(c.num_encoder_layers))
    self.encoder_norm = nn.LayerNorm(d)
    self.decoder_layers = nn.ModuleList(DecoderBlock(c) for _ in range(c.num_decoder_layers))
    self.decoder_norm = nn.LayerNorm(d)
    self.output_heads = nn.ModuleList(
        nn.Linear(d, c.vocab_size) for _ in range(c.num_quantizers))

  def embed(self, codes):  # [B, Q, T] -> [B, T, D]
    return torch.cat([emb(codes[:, q]) for q, emb in enumerate(self.token_embed)], dim=-1)

  def encode(self, input_codes, style):
    x = self.embed(input_codes) + style[:, None]
    for layer in self.encoder_layers:
      x = layer(x)
    return self.encoder_norm(x)

  def heads(self, x):  # [B, T, D] -> [B, Q, T, V]
    return torch.stack([head(x) for head in self.output_heads], dim=1)

  def forward(self, input_codes, target_codes, speaker_id, emotion_id):
    """Teacher-forced logits `[B, Q, T, V]`: targets shifted right with code 0 as the start."""
    style = self.style_embed(speaker_id, emotion_id)
    encoded = self.encode(input_codes, style)
    decoder_in = torch.cat([torch.zeros_like(target_codes[..., :1]), target_codes[..., :-1]], -1)
    t = decoder_in.shape[-1]
    causal = torch.tril(torch.ones(t, t, device=decoder_in.device))
    x = self.embed(decoder_in) + style[:, None]
    for layer in self.decoder_layers:
      x, _ = layer(x, encoded, causal)
    return self.heads(self.decoder_norm(x)), encoded

  @torch.no_grad()
  def generate(self, input_codes, speaker_id, emotion_id, max_new_tokens, temperature=0.8,
               top_p=0.95, generator=None):
    """The original's per-frame loop: encode once, start from an all-zero frame, KV-cached
    decoder self-attention, nucleus sampling per level, no end token. `temperature=0` is greedy.

    Returns codes `[B, Q, max_new_tokens]` and the per-step logits `[B, Q, max_new_tokens, V]`.
    """
    style = self.style_embed(speaker_id, emotion_id)
    encoded = self.encode(input_codes, style)
    b, q = input_codes.shape[:2]
    frame = torch.zeros(b, q, 1, dtype=torch.long, device=input_codes.device)
    caches = [None] * len(self.decoder_layers)
    codes, step_logits = [], []
    for _ in range(max_new_tokens):
      x = self.embed(frame) + style[:, None]
      for i, layer in enumerate(self.decoder_layers):
        x, caches[i] = layer(x, encoded, None, caches[i])
      logits = self.heads(self.decoder_norm(x))[:, :, -1]  # [B, Q, V]
      frame = _sample(logits, temperature, top_p, generator)[..., None]
      codes.append(frame)
      step_logits.append(logits)
    return torch.cat(codes, dim=-1), torch.stack(step_logits, dim=2)


def _sample(logits, temperature, top_p, generator):
  if temperature == 0:
    return logits.argmax(-1)
  probs = torch.softmax(logits / temperature, dim=-1)
  sorted_probs, order = probs.sort(dim=-1, descending=True)
  outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
  sorted_probs = sorted_probs.masked_fill(outside, 0.0)
  choice = torch.multinomial(sorted_probs.flatten(0, -2), 1, generator=generator)
  return order.flatten(0, -2).gather(-1, choice).reshape(logits.shape[:-1])
