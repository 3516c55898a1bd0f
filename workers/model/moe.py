"""Mixture-of-experts FFN of NemotronH (docs/model.md §1.4).

Letters: T tokens, D hidden, E routed experts, I expert inner size, k experts per token.

Router: fp32 logits, sigmoid scores; experts are *chosen* by score + correction bias but
*weighted* by the unbiased scores, renormalised and scaled. Experts and the shared expert
are non-gated MLPs: down(relu(up(x))²). The routed experts are stored stacked for the grouped
kernels (`ExpertStack`, one per projection) in the format of the plan: BF16, FP8 W8A8 or
NVFP4 W4A16 (workers/model/quant.py); the checkpoint stores them one by one, see
`ExpertStack.load`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from kernels.moe_experts_nvfp4 import Nvfp4Weight
from kernels.quant_formats import (
    NVFP4_BLOCK,
    dequant_fp8,
    dequant_nvfp4,
    fp8_scale,
    quantize_fp8,
    quantize_nvfp4,
)
from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.config import LLMConfig
from workers.model.linear import Linear, frozen
from workers.model.quant import BF16, FP8, NVFP4, QuantPlan

_EXPERT_KEY = re.compile(r"experts\.(\d+)\.(up_proj|down_proj)\.(\w+)")


def parse_expert_key(name: str) -> tuple[int, str, str] | None:
    """`experts.{j}.{up_proj|down_proj}.{leaf}` (the tail of a checkpoint key) ->
    (j, which, leaf); None for any other name, so the loader can route keys with one call."""
    m = _EXPERT_KEY.fullmatch(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else None


class Router(nn.Module):
    """`gate.weight` [E,D] and `gate.e_score_correction_bias` [E], both kept in fp32."""

    def __init__(self, config: LLMConfig, device=None):
        super().__init__()
        f32 = {"device": device, "dtype": torch.float32}
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size, **f32))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts, **f32))


class ExpertStack(nn.Module):
    """One projection of all E routed experts, logically [E, N, K]: the checkpoint's
    `experts.{j}.<proj>.<leaf>` is our `experts.<proj>.<leaf>[j]`.

    BF16: weight [E,N,K]. FP8: weight E4M3 [E,N,K], weight_scale [E], input_scale [E].
    NVFP4: weight uint8 [E,N,K/2], weight_scale E4M3 [E,N,K/16], weight_scale_2 [E],
    input_scale [E] (kept for the published layout; W4A16 does not read it).
    """

    def __init__(self, E: int, N: int, K: int, fmt: str, device=None, dtype=None):
        super().__init__()
        self.fmt = fmt
        self.out_features, self.in_features = N, K
        f32 = torch.float32
        if fmt == BF16:
            self.weight = nn.Parameter(torch.empty(E, N, K, device=device, dtype=dtype))
        elif fmt == FP8:
            self.weight = frozen((E, N, K), torch.float8_e4m3fn, device)
            self.weight_scale = frozen((E,), f32, device)
            self.input_scale = frozen((E,), f32, device)
        elif fmt == NVFP4:
            self.weight = frozen((E, N, K // 2), torch.uint8, device)
            self.weight_scale = frozen((E, N, K // NVFP4_BLOCK), torch.float8_e4m3fn, device)
            self.weight_scale_2 = frozen((E,), f32, device)
            self.input_scale = frozen((E,), f32, device)
        else:
            raise ValueError(f"unknown expert format {fmt!r}")

    @torch.no_grad()
    def load(self, j: int, leaf: str, tensor: torch.Tensor) -> None:
        """Copy expert j's checkpoint tensor `leaf` into its slice of the stack (converting
        the device, and the dtype of an unquantized weight)."""
        target = getattr(self, leaf, None)
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"a {self.fmt} expert has no {leaf}")
        if tensor.shape != target[j].shape:
            raise ValueError(
                f"shape {tuple(tensor.shape)}, expected {tuple(target[j].shape)} ({self.fmt})"
            )
        if self.fmt != BF16 and tensor.dtype != target.dtype:
            raise ValueError(f"dtype {tensor.dtype}, expected {target.dtype} ({self.fmt})")
        target[j].copy_(tensor)

    @torch.no_grad()
    def set_weight(self, j: int, w: torch.Tensor) -> None:
        """Store expert j's high-precision weight [N, K] in this stack's format (quantize at
        load); the input scales are left to calibration."""
        if w.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"shape {tuple(w.shape)}, expected {(self.out_features, self.in_features)}"
            )
        w = w.to(self.weight.device)
        if self.fmt == FP8:
            scale = fp8_scale(w)
            self.weight[j].copy_(quantize_fp8(w, scale))
            self.weight_scale[j].copy_(scale)
        elif self.fmt == NVFP4:
            packed, block_scale, scale_2 = quantize_nvfp4(w)
            self.weight[j].copy_(packed)
            self.weight_scale[j].copy_(block_scale)
            self.weight_scale_2[j].copy_(scale_2)
        else:
            self.weight[j].copy_(w)

    @torch.no_grad()
    def dequantized(self, j: int) -> torch.Tensor:
        """Expert j's weight as the quantized one stands for it, [N, K] fp32."""
        if self.fmt == FP8:
            return dequant_fp8(self.weight[j], self.weight_scale[j])
        if self.fmt == NVFP4:
            return dequant_nvfp4(self.weight[j], self.weight_scale[j], self.weight_scale_2[j])
        return self.weight[j].float()

    def nvfp4(self) -> Nvfp4Weight:
        return Nvfp4Weight(self.weight, self.weight_scale, self.weight_scale_2)


class RoutedExperts(nn.Module):
    """`up_proj` [E,I,D] and `down_proj` [E,D,I] stacks; one grouped kernel per format."""

    def __init__(self, config: LLMConfig, fmt: str, device=None, dtype=None):
        super().__init__()
        E, inner, D = config.n_routed_experts, config.moe_intermediate_size, config.hidden_size
        self.fmt = fmt
        self.num_experts = E
        self.up_proj = ExpertStack(E, inner, D, fmt, device, dtype)
        self.down_proj = ExpertStack(E, D, inner, fmt, device, dtype)

    def forward(
        self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        """x [T,D], topk_weights [T,k] fp32, topk_ids [T,k] int32 -> [T,D] in x's dtype."""
        up, down = self.up_proj, self.down_proj
        if self.fmt == FP8:
            # One static activation scale per GEMM of the MoE: the largest over the experts,
            # as vLLM serves ModelOpt's per-expert input scales.
            return ops.moe_experts_fp8(
                x,
                up.weight,
                down.weight,
                up.weight_scale,
                down.weight_scale,
                up.input_scale.amax(),
                down.input_scale.amax(),
                topk_weights,
                topk_ids,
            )
        if self.fmt == NVFP4:
            return ops.moe_experts_nvfp4(x, up.nvfp4(), down.nvfp4(), topk_weights, topk_ids)
        return ops.moe_experts(x, up.weight, down.weight, topk_weights, topk_ids)


class SharedExpert(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int, formats, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.up_proj = Linear(hidden_size, inner_size, formats[0], **kw)
        self.down_proj = Linear(inner_size, hidden_size, formats[1], **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = self.up_proj, self.down_proj
        h_scale = down.fused_input_scale(x.dtype)
        if up.fmt == FP8 and h_scale is not None:
            return down(up(x, relu2_out_scale=h_scale))  # relu² and down's quantization fused
        return down(F.relu(up(x)).square())


class MoE(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, plan: QuantPlan, device=None, dtype=None):
        super().__init__()
        c = config
        if not c.norm_topk_prob:
            raise NotImplementedError("MoE without top-k renormalisation is not implemented")
        self.top_k = c.num_experts_per_tok
        self.routed_scaling_factor = c.routed_scaling_factor
        p = f"layers.{layer_idx}.mixer."
        self.gate = Router(c, device=device)
        self.experts = RoutedExperts(c, plan.format(p + "experts"), device, dtype)
        shared = (
            plan.format(p + "shared_experts.up_proj"),
            plan.format(p + "shared_experts.down_proj"),
        )
        self.shared_experts = SharedExpert(
            c.hidden_size, c.shared_expert_intermediate_size, shared, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: HybridCache) -> torch.Tensor:
        """x[T,D] (normed) -> [T,D]; stateless, the batch and cache are unused."""
        weights, ids = ops.moe_route(
            x,
            self.gate.weight,
            self.gate.e_score_correction_bias,
            self.top_k,
            self.routed_scaling_factor,
        )
        return self.experts(x, weights, ids) + self.shared_experts(x)
