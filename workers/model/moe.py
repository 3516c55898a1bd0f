"""Mixture-of-experts FFN of NemotronH (docs/model.md §1.4).

Letters: T tokens, D hidden, E routed experts, I expert inner size, k experts per token.

Router: fp32 logits, sigmoid scores; experts are *chosen* by score + correction bias but
*weighted* by the unbiased scores, renormalised and scaled. Experts and the shared expert
are non-gated MLPs: down(relu(up(x))²). The routed experts are stored stacked
(`experts_up` [E,I,D], `experts_down` [E,D,I]) for the grouped kernels; the checkpoint
stores them one by one, see `load_expert`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.cache import ForwardBatch, HybridCache
from workers.model import ops
from workers.model.config import LLMConfig

_EXPERT_KEY = re.compile(r"experts\.(\d+)\.(up_proj|down_proj)\.weight")


def parse_expert_key(name: str) -> tuple[int, str] | None:
    """`experts.{j}.{up_proj|down_proj}.weight` (the tail of a checkpoint key) -> (j, which).

    Returns None for any other name, so the loader can route keys with one call.
    """
    m = _EXPERT_KEY.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None


class Router(nn.Module):
    """`gate.weight` [E,D] and `gate.e_score_correction_bias` [E], both kept in fp32."""

    def __init__(self, config: LLMConfig, device=None):
        super().__init__()
        f32 = {"device": device, "dtype": torch.float32}
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size, **f32))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts, **f32))


class SharedExpert(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int, device=None, dtype=None):
        super().__init__()
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.up_proj = nn.Linear(hidden_size, inner_size, **kw)
        self.down_proj = nn.Linear(inner_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


class MoE(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        c = config
        if not c.norm_topk_prob:
            raise NotImplementedError("MoE without top-k renormalisation is not implemented")
        self.top_k = c.num_experts_per_tok
        self.routed_scaling_factor = c.routed_scaling_factor
        E, inner, D = c.n_routed_experts, c.moe_intermediate_size, c.hidden_size
        self.gate = Router(c, device=device)
        self.experts_up = nn.Parameter(torch.empty(E, inner, D, device=device, dtype=dtype))
        self.experts_down = nn.Parameter(torch.empty(E, D, inner, device=device, dtype=dtype))
        self.shared_experts = SharedExpert(
            D, c.shared_expert_intermediate_size, device=device, dtype=dtype
        )

    @torch.no_grad()
    def load_expert(self, j: int, which: str, weight: torch.Tensor) -> None:
        """Copy one checkpoint expert matrix into its slice of the stack.

        which="up_proj": weight [I,D] -> experts_up[j]; "down_proj": [D,I] -> experts_down[j].
        The copy converts dtype and device, so tensors can stream straight from a shard.
        """
        target = {"up_proj": self.experts_up, "down_proj": self.experts_down}[which][j]
        if weight.shape != target.shape:
            raise ValueError(
                f"expert {j} {which}: shape {tuple(weight.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(weight)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: HybridCache) -> torch.Tensor:
        """x[T,D] (normed) -> [T,D]; stateless, the batch and cache are unused."""
        weights, ids = ops.moe_route(
            x,
            self.gate.weight,
            self.gate.e_score_correction_bias,
            self.top_k,
            self.routed_scaling_factor,
        )
        routed = ops.moe_experts(x, self.experts_up, self.experts_down, weights, ids)
        return routed + self.shared_experts(x)
