"""Bicubic + antialias resize on float [0, 255] and CLIP normalisation (docs/model.md §2.3 step 5,
§3.1).

Shared by images, document pages and video frames so all three see identical pixels. Images
and pages are resized on CPU in the media pool; video frames on the vision encoder's device
(`video_pixels`, called by workers/model/vision.py).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

PATCH = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_normalize(rgb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """rgb: uint8 [N, H, W, 3] -> float32 [N, 3, 16·ph, 16·pw], CLIP-normalised."""
    return _planar_pixels(rgb.permute(0, 3, 1, 2).contiguous(), grid)  # planar: ~30% cheaper


def video_pixels(tubelets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """tubelets: uint8 [n, 2, 3, H, W] as decoded -> float32 [n, 2, 3, 16·ph, 16·pw].

    The same pixels `resize_normalize` gives each frame, computed on the tubelets' device:
    the model runs it on the GPU so the CPU pool only decodes.
    """
    n, t = tubelets.shape[:2]
    # Decoded frames arrive as a channels-last view; the resize is cheaper on planar frames.
    pixels = _planar_pixels(tubelets.flatten(0, 1).contiguous(), grid)
    return pixels.view(n, t, *pixels.shape[1:])


def _planar_pixels(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 [N, 3, 16·ph, 16·pw], CLIP-normalised, on x's device.

    The resize runs in float32 without clamping: the bicubic overshoot is part of what the
    model saw in training (the reference keeps it too).
    """
    x = x.to(torch.float32)
    size = (grid[0] * PATCH, grid[1] * PATCH)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    mean, std = _clip_stats(x.device)
    return (x * (1.0 / 255.0) - mean) / std


@functools.cache
def _clip_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP mean and std [1, 3, 1, 1] fp32 on `device`, made once: a tensor built from a list
    on a GPU is a copy from pageable memory, which waits for all the GPU's queued work (the
    video resize would otherwise wait for the ViT forward before it at each slice)."""
    return tuple(torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))


def _even(ph: int, pw: int, budget: int) -> tuple[int, int]:
    """Spec §2.3 step 4: round each side up to even while the product fits, else down (min 2)."""
    if ph % 2:
        ph = ph + 1 if (ph + 1) * pw <= budget else max(2, ph - 1)
    if pw % 2:
        pw = pw + 1 if ph * (pw + 1) <= budget else max(2, pw - 1)
    return ph, pw


def image_grid(height: int, width: int, budget: int, min_patches: int = 1024) -> tuple[int, int]:
    """Patch grid (ph, pw) of an image under a budget of `budget` patches (docs/model.md §2.3)."""
    ph = round(height / PATCH + 0.5)  # round-half-even on purpose: exact odd multiples get +1
    pw = round(width / PATCH + 0.5)
    f = min(math.sqrt(budget / (ph * pw)), 1.0)
    ph, pw = max(1, math.floor(f * ph)), max(1, math.floor(f * pw))  # extreme aspects
    if budget > min_patches and ph * pw < min_patches:
        f = math.sqrt(min_patches / (ph * pw))
        ph, pw = math.ceil(f * ph), math.ceil(f * pw)
    return _even(ph, pw, budget)


VIDEO_PATCHES = 1024  # per frame, at most (docs/model.md §3.1)


def video_grid(height: int, width: int, target: int = VIDEO_PATCHES) -> tuple[int, int]:
    """Per-frame patch grid (ph, pw) near `target` patches keeping the aspect (docs/model.md
    §3.1)."""
    a = width / max(height, 1)
    ph = max(round(math.sqrt(target / a)), 1)
    pw = max(round(math.sqrt(target * a)), 1)
    up = (ph + ph % 2, pw + pw % 2)
    if up[0] * up[1] <= target:
        return up
    return max(2, ph - ph % 2), max(2, pw - pw % 2)
