"""Parakeet FastConformer audio encoder (docs/model.md §4.2) and the audio encoding API.

API (the omni model mounts `AudioEncoder` as `sound_encoder.encoder`, the projector as
`sound_projection`; parameter names are the checkpoint keys below those prefixes, docs/model.md
§6.3):

    AudioEncoder(cfg).forward(features[N, T, mel]) -> [N, ceil(T/8), D]   (no padding, no mask)
    encode_audios(encoder, projector, items) -> per AudioItem [item.num_tokens, out]
    encode_audio(encoder, projector, item)   -> [item.num_tokens, out]

Each ≤ 30 s clip is encoded on its own and the outputs are concatenated. A clip is cut to its
valid mel frames (samples // 160) before the encoder: that gives exactly the rows of a masked,
padded batch on its valid positions, and NVIDIA's count ceil((samples // 160) / 8) (docs/model.md
§4.4,
§9.4). Clips of equal valid length (every full 30 s clip) share one batched forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from media.items import AudioItem
from workers.model.config import AudioConfig
from workers.model.host_copy import host_to_device

HOP_SAMPLES = 160  # 10 ms mel hop at 16 kHz
# Mel frames per encoder forward when the caller gives no budget (the engine's comes from its
# memory plan): 32 clips of 30 s. The subsampling's first conv output and its ReLU are
# ≈ 98 MB per 30 s clip in bf16, so a batch of a few hundred clips would need tens of GB.
MAX_AUDIO_FRAMES = 32 * 3000

# N clips, T frames, D width, H heads, d head dim.


class Subsampling(nn.Module):
    """8× time and frequency reduction: conv 3×3/2, then (depthwise 3×3/2, pointwise) pairs.

    `layers` keeps the ReLUs as entries so the conv indices are the checkpoint's 0, 2, 3, 5, 6.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        c = cfg.subsampling_channels
        stages = int(math.log2(cfg.subsampling_factor))
        layers: list[nn.Module] = [nn.Conv2d(1, c, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(stages - 1):
            layers += [
                nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c),
                nn.Conv2d(c, c, 1),
                nn.ReLU(),
            ]
        self.layers = nn.ModuleList(layers)
        self.linear = nn.Linear(c * (cfg.num_mel_bins // cfg.subsampling_factor), cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, T, mel] -> [N, T', D], T' = ceil(T / 8)."""
        x = x.unsqueeze(1)
        for layer in self.layers:
            x = layer(x)
        n, c, t, f = x.shape
        return self.linear(x.transpose(1, 2).reshape(n, t, c * f))


def relative_positions(length: int, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Sinusoids for offsets L-1 … -(L-1) -> [2L-1, D], sin/cos interleaved, computed in fp32."""
    pos = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = pos[:, None] * inv_freq
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(2 * length - 1, dim).to(dtype)


class RelPosAttention(nn.Module):
    """Transformer-XL attention: ((q+u)·k + shift((q+v)·R)) / √d."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        d, h = cfg.hidden_size, cfg.num_heads
        self.num_heads = h
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.relative_k_proj = nn.Linear(d, d, bias=False)
        self.bias_u = nn.Parameter(torch.zeros(h, d // h))
        self.bias_v = nn.Parameter(torch.zeros(h, d // h))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [N, L, D], pos [2L-1, D] -> [N, L, D]."""
        n, length, dim = x.shape
        h = self.num_heads
        q, k, v = (
            p(x).view(n, length, h, -1).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        r = self.relative_k_proj(pos).view(2 * length - 1, h, -1).permute(1, 2, 0)  # [H, d, 2L-1]
        bd = ((q + self.bias_v[:, None]) @ r).contiguous()  # [N, H, L, 2L-1]
        # Query i, key j needs offset i-j, stored at column L-1-i+j: a strided view whose row
        # stride is one less than the row length reads that diagonal without a copy.
        s0, s1, s2, _ = bd.stride()
        bd = bd.as_strided(
            (n, h, length, length), (s0, s1, s2 - 1, 1), bd.storage_offset() + length - 1
        )
        scale = q.shape[-1] ** -0.5
        o = F.scaled_dot_product_attention(q + self.bias_u[:, None], k, v, attn_mask=bd * scale)
        return self.o_proj(o.transpose(1, 2).reshape(n, length, dim))


class ConvModule(nn.Module):
    """Pointwise → GLU → depthwise → BatchNorm (running stats) → SiLU → pointwise; no biases."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        d, k = cfg.hidden_size, cfg.conv_kernel
        self.pointwise_conv1 = nn.Conv1d(d, 2 * d, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(d, d, k, padding=(k - 1) // 2, groups=d, bias=False)
        self.norm = nn.BatchNorm1d(d)
        self.pointwise_conv2 = nn.Conv1d(d, d, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, D] -> [N, L, D]."""
        y = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        y = self.depthwise_conv(y)
        bn = self.norm
        # inference only: always the running statistics, whatever the module's train flag
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.pointwise_conv2(F.silu(y)).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.linear2 = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class ConformerBlock(nn.Module):
    """Macaron block: ½FF, attention, conv, ½FF, each pre-LN with a residual; then LN."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.feed_forward1 = FeedForward(cfg)
        self.self_attn = RelPosAttention(cfg)
        self.conv = ConvModule(cfg)
        self.feed_forward2 = FeedForward(cfg)
        self.norm_feed_forward1 = nn.LayerNorm(d, eps=eps)
        self.norm_self_att = nn.LayerNorm(d, eps=eps)
        self.norm_conv = nn.LayerNorm(d, eps=eps)
        self.norm_feed_forward2 = nn.LayerNorm(d, eps=eps)
        self.norm_out = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + self.self_attn(self.norm_self_att(x), pos)
        x = x + self.conv(self.norm_conv(x))
        x = x + 0.5 * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.subsampling = Subsampling(cfg)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_layers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, T, mel], all T frames valid -> [N, ceil(T/8), D]."""
        x = self.subsampling(features)
        pos = relative_positions(x.shape[1], x.shape[2], x.dtype, x.device)
        for layer in self.layers:
            x = layer(x, pos)
        return x


def _valid_clips(item: AudioItem) -> list[torch.Tensor]:
    if len(item.clip_samples) != len(item.clips):
        raise ValueError(
            f"AudioItem has {len(item.clips)} clips but {len(item.clip_samples)} clip_samples"
        )
    clips = []
    for clip, samples in zip(item.clips, item.clip_samples, strict=True):
        frames = samples // HOP_SAMPLES
        if not 0 < frames <= clip.shape[0]:
            raise ValueError(
                f"clip of {samples} samples needs {frames} frames, has {clip.shape[0]}"
            )
        clips.append(clip[:frames])
    return clips


def encode_audios(
    encoder: AudioEncoder,
    projector: nn.Module,
    items: list[AudioItem],
    max_frames: int = MAX_AUDIO_FRAMES,
) -> list[torch.Tensor]:
    """Encode every clip of every item -> per item [tokens, out]. Clips of equal length share
    a forward, up to `max_frames` mel frames each (one clip at least); only those clips are on
    the device as input at once, and each forward writes its rows into the items' outputs."""
    w = encoder.subsampling.linear.weight
    width = projector.linear2.out_features
    clips = [c for item in items for c in _valid_clips(item)]
    outs = [torch.empty(i.num_tokens, width, device=w.device, dtype=w.dtype) for i in items]
    where: list[tuple[int, int]] = []  # (item, first row) of each clip
    for k, item in enumerate(items):
        row = 0
        for samples in item.clip_samples:
            where.append((k, row))
            row += -(-(samples // HOP_SAMPLES) // encoder.cfg.subsampling_factor)
    by_length: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        by_length.setdefault(c.shape[0], []).append(i)
    for length, same in by_length.items():
        step = max(1, max_frames // length)
        for a in range(0, len(same), step):
            idx = same[a : a + step]
            batch = torch.stack([host_to_device(clips[i], w.device).to(w.dtype) for i in idx])
            emb = projector(encoder(batch))
            del batch
            for i, e in zip(idx, emb, strict=True):
                k, row = where[i]
                outs[k][row : row + e.shape[0]] = e
    return outs


def encode_audio(encoder: AudioEncoder, projector: nn.Module, item: AudioItem) -> torch.Tensor:
    return encode_audios(encoder, projector, [item])[0]
