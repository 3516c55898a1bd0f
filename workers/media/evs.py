"""Efficient Video Sampling applied to one video's post-projector embeddings (spec §3.3).

The LLM has no positional encoding, so pruned tokens are simply dropped; what the prompt
needs is how many tokens each tubelet kept (its `<image>` run length after its label).
"""

from __future__ import annotations

import torch

from kernels.evs import evs_keep_mask, evs_keep_mask_ref


def retention_mask(emb: torch.Tensor, q: float) -> torch.Tensor:
    """emb[N, R, C, D] -> bool [N, R, C]; Triton on CUDA, the PyTorch reference elsewhere."""
    return evs_keep_mask(emb, q) if emb.is_cuda else evs_keep_mask_ref(emb, q)


def apply_evs(emb: torch.Tensor, grid: tuple[int, int], q: float) -> tuple[torch.Tensor, list[int]]:
    """emb[N·R·C, D] tubelet-major, raster order -> (kept [K, D] in order, count per tubelet).

    grid: (R, C), the post-pixel-shuffle token grid of one tubelet. q = 0 keeps everything.
    """
    rows, cols = grid
    n = emb.shape[0] // (rows * cols)
    assert n * rows * cols == emb.shape[0], "embeddings do not tile the grid"
    if q <= 0:
        return emb, [rows * cols] * n
    mask = retention_mask(emb.view(n, rows, cols, -1), q)
    return emb[mask.view(-1)], mask.view(n, -1).sum(dim=1).tolist()
