"""Model-ready media items with random contents, for model and engine tests."""

from __future__ import annotations

import torch

from workers.media.items import AudioItem, ImageItem, VideoItem


def make_image(grid: tuple[int, int], gen: torch.Generator) -> ImageItem:
    h, w = grid
    return ImageItem(pixels=torch.randn(3, 16 * h, 16 * w, generator=gen), grid=grid)


def make_video(
    frames: int, grid: tuple[int, int], gen: torch.Generator, audio: AudioItem | None = None
) -> VideoItem:
    """Frames that change a little around a common base, so EVS has something to prune."""
    h, w = grid
    base = torch.randn(3, 16 * h, 16 * w, generator=gen)
    f = base + 0.5 * torch.randn(frames, 3, 16 * h, 16 * w, generator=gen)
    if frames % 2:
        f = torch.cat([f, f[-1:]])  # an odd last frame is repeated (spec §3.2)
    tubelets = f.reshape(-1, 2, 3, 16 * h, 16 * w)
    stamps = [0.5 * k for k in range(frames)]
    return VideoItem(tubelets=tubelets, grid=grid, timestamps=stamps, audio=audio)


def make_audio(clip_samples: list[int], gen: torch.Generator) -> AudioItem:
    clips = [torch.randn(n // 160 + 1, 128, generator=gen) for n in clip_samples]
    return AudioItem(clips=clips, num_samples=sum(clip_samples), clip_samples=clip_samples)
