"""Routed MoE experts of the NVFP4 checkpoint as W4A16 on Hopper (no FP4 tensor cores).

Letters: T tokens, D hidden, I expert inner size, E experts, k experts per token.

Weights stay packed as published (kernels/quant_formats.py): e2m1 x e4m3 is exact in bf16,
so the kernel dequantizes in registers, multiplies with bf16 activations and applies the
fp32 scale_2 after the K loop. The checkpoint's input_scale is unused (activations stay bf16).
"""

from dataclasses import dataclass

import torch

from kernels.quant_formats import NVFP4_BLOCK, dequant_nvfp4


@dataclass(frozen=True)
class Nvfp4Weight:
    """One stacked NVFP4 expert matrix, logically [E, N, K], in the published layout."""

    packed: torch.Tensor  # uint8 [E, N, K/2], low nibble = even k
    block_scale: torch.Tensor  # float8_e4m3fn [E, N, K/16]
    scale_2: torch.Tensor  # fp32 [E]

    def __post_init__(self):
        E, N, half_k = self.packed.shape
        assert self.packed.dtype == torch.uint8, self.packed.dtype
        assert self.block_scale.dtype == torch.float8_e4m3fn, self.block_scale.dtype
        assert self.block_scale.shape == (E, N, 2 * half_k // NVFP4_BLOCK), (
            self.block_scale.shape,
            self.packed.shape,
        )
        assert self.scale_2.shape == (E,) and self.scale_2.dtype == torch.float32

    @property
    def shape(self):
        """Logical (E, N, K)."""
        E, N, half_k = self.packed.shape
        return E, N, 2 * half_k

    def dequant(self, e):
        """Expert e's matrix [N, K] in fp32."""
        return dequant_nvfp4(self.packed[e], self.block_scale[e], self.scale_2[e])


def moe_experts_nvfp4_ref(x, up, down, topk_weights, topk_ids):
    """Plain PyTorch twin of `moe_experts_nvfp4`: per expert that got tokens, dequantize
    (fp32) then the bf16 expert math of kernels/moe_experts.py (h rounded to x's dtype).

    x [T, D] bf16; up: Nvfp4Weight [E, I, D]; down: Nvfp4Weight [E, D, I];
    topk_weights [T, k] fp32; topk_ids [T, k] int32. Returns [T, D] in x's dtype.
    """
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    flat_ids = topk_ids.reshape(-1).long()
    for e in torch.unique(flat_ids).tolist():
        assign = (flat_ids == e).nonzero().squeeze(1)  # [n] indices into T*k
        tokens = assign // topk_ids.shape[1]
        h = torch.relu(x[tokens].float() @ up.dequant(e).t()).square().to(x.dtype)
        y = h.float() @ down.dequant(e).t() * topk_weights.reshape(-1)[assign, None]
        out.index_add_(0, tokens, y.to(x.dtype).float())
    return out.to(x.dtype)
