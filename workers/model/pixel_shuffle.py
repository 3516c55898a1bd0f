"""Pixel shuffle v2 with ratio 0.5 (docs/model.md §2.4).

pixel_shuffle(x[N, h, w, C]) -> [N, h/2, w/2, 4C]: output token (i, j) concatenates the inputs
at (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1), i.e. channel r·2C + s·C + c for row offset r
and column offset s.
"""

from __future__ import annotations

import torch


def pixel_shuffle(x: torch.Tensor) -> torch.Tensor:
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"pixel shuffle needs an even grid, got {h}×{w}")
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)
