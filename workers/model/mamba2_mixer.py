"""Mamba-2 mixer of NemotronH (docs/model.md §1.2).

Letters: T packed tokens, B sequences, D hidden, H heads, P head dim, G groups, N state,
C conv channels (x, B and C), K conv width.

in_proj → [z, xBC, dt]; depthwise causal conv (with bias) + SiLU over xBC; SSD scan over
x with B, C, dt; y·SiLU(z) then RMSNorm per group; out_proj. Prefill runs the chunked scan
over the packed sequences (varlen), decode advances the recurrent state one token.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.config import LLMConfig
from workers.model.linear import Linear
from workers.model.quant import QuantPlan


class GatedGroupRMSNorm(nn.Module):
    def __init__(self, size: int, group_size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, device=device, dtype=dtype))
        self.group_size = group_size
        self.eps = eps

    def forward(
        self, y: torch.Tensor, z: torch.Tensor, out_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y[T,C], z[T,C] (any row stride) -> [T,C]; in E4M3, quantized by out_scale, when
        given."""
        return ops.gated_group_rmsnorm(y, z, self.weight, self.group_size, self.eps, out_scale)


class Mamba2Mixer(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, plan: QuantPlan, device=None, dtype=None):
        super().__init__()
        c = config
        self.cache_index = c.mamba_layers.index(layer_idx)
        self.num_heads, self.head_dim = c.mamba_num_heads, c.mamba_head_dim
        self.n_groups, self.state_size = c.n_groups, c.ssm_state_size
        self.d_inner, self.conv_dim = c.d_inner, c.conv_dim
        self.chunk_size = c.chunk_size
        kw = {"device": device, "dtype": dtype}
        p = f"layers.{layer_idx}.mixer."
        self.in_proj = Linear(c.hidden_size, c.in_proj_dim, plan.format(p + "in_proj"), **kw)
        self.conv1d = nn.Conv1d(
            c.conv_dim, c.conv_dim, c.conv_kernel, groups=c.conv_dim, bias=True, **kw
        )
        # Per-head scalars stay fp32 whatever the model dtype: the scan works in fp32 and
        # a bf16 checkpoint value widens losslessly.
        f32 = {"device": device, "dtype": torch.float32}
        self.dt_bias = nn.Parameter(torch.empty(c.mamba_num_heads, **f32))
        self.A_log = nn.Parameter(torch.empty(c.mamba_num_heads, **f32))
        self.D = nn.Parameter(torch.empty(c.mamba_num_heads, **f32))
        self.norm = GatedGroupRMSNorm(c.d_inner, c.d_inner // c.n_groups, c.norm_eps, **kw)
        self.out_proj = Linear(c.d_inner, c.hidden_size, plan.format(p + "out_proj"), **kw)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: HybridCache) -> torch.Tensor:
        """x[T,D] (normed) -> [T,D]; reads and advances the slots' conv and SSM state."""
        T = x.shape[0]
        H, P, G, N = self.num_heads, self.head_dim, self.n_groups, self.state_size
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        conv_state = cache.conv_state[self.cache_index]
        ssm_state = cache.ssm_state[self.cache_index]
        conv_w = self.conv1d.weight.squeeze(1)  # [C,K]
        A = -torch.exp(self.A_log)

        if batch.is_decode:
            xbc = ops.causal_conv1d_update(xbc, conv_state, conv_w, self.conv1d.bias, batch.slots)
        else:
            xbc = ops.causal_conv1d_varlen(
                xbc,
                conv_w,
                self.conv1d.bias,
                batch.cu_seqlens,
                conv_state,
                batch.slots,
                batch.context_lens > 0,
            )
        xs, Bm, Cm = xbc.split([self.d_inner, G * N, G * N], dim=-1)
        xs, Bm, Cm = xs.reshape(T, H, P), Bm.reshape(T, G, N), Cm.reshape(T, G, N)

        if batch.is_decode:
            y = ops.ssm_state_update(
                ssm_state, xs, dt, A, Bm, Cm, self.D, self.dt_bias, batch.slots
            )
        else:
            # A new slot's state is zero (HybridCache.alloc_slot), so every sequence can
            # start from its slot's state.
            y, final = ops.ssd_scan(
                xs,
                dt,
                A,
                Bm,
                Cm,
                self.D,
                self.dt_bias,
                batch.cu_seqlens,
                ssm_state[batch.slots],
                self.chunk_size,
            )
            ssm_state.index_copy_(0, batch.slots, final)

        y = self.norm(y.reshape(T, self.d_inner), z, self.out_proj.fused_input_scale(y.dtype))
        return self.out_proj(y)
