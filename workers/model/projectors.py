"""The two projectors into the LLM width (docs/model.md §2.5, §4.3).

Both are RMSNorm → Linear → ReLU² → Linear, without biases:

    VisionProjector(5120, 20480, 2688)  mounted as `mlp1`              keys 0 (norm), 1, 3
    SoundProjector(1024, 4096, 2688)    mounted as `sound_projection`  keys norm, linear1, linear2

forward(x[..., in]) -> [..., out], in the dtype of x.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm whose statistics and weight multiply run in fp32, cast back at the end."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class VisionProjector(nn.Sequential):
    """`mlp1`: a Sequential so that the parameter names are the checkpoint's `0`, `1`, `3`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, eps: float = 1e-5) -> None:
        super().__init__(
            RMSNorm(in_dim, eps),
            nn.Linear(in_dim, hidden_dim, bias=False),
            ReLUSquared(),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )


class SoundProjector(nn.Module):
    """`sound_projection`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = RMSNorm(in_dim, eps)
        self.linear1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.linear2 = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(torch.relu(self.linear1(self.norm(x))).square())
