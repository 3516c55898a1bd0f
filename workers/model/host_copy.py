"""Host tensors to the GPU, queued behind the GPU's work instead of waiting for it."""

from __future__ import annotations

import torch


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; a host tensor's copy is queued like a kernel.

    A copy from pageable memory makes the host wait until the GPU has run everything queued
    before it (the driver stages the bytes through pinned memory of its own), so the GPU
    idles while the host stages them, then while it launches what follows: W-video's 64
    clips are 10.6 GB of frames, and every prompt's token ids and audio clips cross too.
    Staged into pinned memory here (a memcpy: `pin_memory` keeps the strides), the copy is
    queued; torch's caching host allocator keeps the pinned block until the copy has run.
    """
    if t.device.type != "cpu" or torch.device(device).type != "cuda":  # there already, or no GPU
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
