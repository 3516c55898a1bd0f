"""Tiny configs and model-ready media items with random contents, for model and engine tests."""

from __future__ import annotations

import torch

from media.items import AudioItem, ImageItem, VideoItem
from workers.model.config import LLMConfig

# The smallest LLM config with a Mamba, an attention and an MoE layer: for cache and
# scheduler tests, which need the cache's shapes but never run the model.
TINY_LLM = LLMConfig(
    hidden_size=16,
    vocab_size=32,
    pattern="M*E",
    mamba_num_heads=2,
    mamba_head_dim=4,
    n_groups=1,
    ssm_state_size=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=4,
)


def make_image(grid: tuple[int, int], gen: torch.Generator) -> ImageItem:
    h, w = grid
    return ImageItem(pixels=torch.randn(3, 16 * h, 16 * w, generator=gen), grid=grid)


def make_video(
    frames: int, grid: tuple[int, int], gen: torch.Generator, audio: AudioItem | None = None
) -> VideoItem:
    """uint8 frames that change a little around a common base, so EVS has something to prune.

    The decoded size is taller and narrower than the target grid's pixels, so the model's
    resize both shrinks (antialiased) and stretches.
    """
    h, w = 20 * grid[0] + 3, 12 * grid[1] + 1
    base = torch.randint(0, 256, (3, h, w), generator=gen)
    noise = torch.randint(-24, 25, (frames, 3, h, w), generator=gen)
    f = (base + noise).clamp(0, 255).to(torch.uint8)
    if frames % 2:
        f = torch.cat([f, f[-1:]])  # an odd last frame is repeated (docs/model.md §3.2)
    stamps = [0.5 * k for k in range(frames)]
    return VideoItem(tubelets=f.reshape(-1, 2, 3, h, w), grid=grid, timestamps=stamps, audio=audio)


def make_audio(clip_samples: list[int], gen: torch.Generator) -> AudioItem:
    clips = [torch.randn(n // 160 + 1, 128, generator=gen) for n in clip_samples]
    return AudioItem(clips=clips, num_samples=sum(clip_samples), clip_samples=clip_samples)
