"""GQA self-attention of NemotronH (docs/model.md §1.3).

Letters: T packed tokens, B sequences, D hidden, Hq query heads, Hkv KV heads, d head dim.

No positional encoding of any kind: q and k go into the softmax as projected (order comes
from the Mamba layers). New K/V rows are written to the layer's pool first, then the
kernel attends over the whole cached context of each sequence through req_to_token.

With an FP8 KV cache (the published FP8 and NVFP4 checkpoints) the pools are E4M3: rows are
written as E4M3 of k / k_scale (ops.fp8_quantize) and the kernels dequantize with the same
static scales, which the checkpoint stores as `k_proj.k_scale` / `v_proj.v_scale` (ModelOpt
names).
"""

from __future__ import annotations

import torch
from torch import nn

from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.config import LLMConfig
from workers.model.linear import Linear, frozen
from workers.model.quant import QuantPlan


class Attention(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, plan: QuantPlan, device=None, dtype=None):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.cache_index = c.attention_layers.index(layer_idx)
        self.num_heads, self.num_kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.scale = c.head_dim**-0.5
        kw = {"device": device, "dtype": dtype}
        d, q, kv = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        )

        def fmt(name: str) -> str:
            return plan.format(f"layers.{layer_idx}.mixer.{name}")

        self.q_proj = Linear(d, q, fmt("q_proj"), **kw)
        self.k_proj = Linear(d, kv, fmt("k_proj"), **kw)
        self.v_proj = Linear(d, kv, fmt("v_proj"), **kw)
        self.o_proj = Linear(q, d, fmt("o_proj"), **kw)
        self.kv_fp8 = plan.kv_fp8
        if plan.kv_fp8:
            self.k_proj.k_scale = frozen((), torch.float32, device)
            self.v_proj.v_scale = frozen((), torch.float32, device)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: HybridCache) -> torch.Tensor:
        """x[T,D] (normed) -> [T,D]; the batch's KV pool rows must be reserved."""
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        k_pool, v_pool = cache.k_pool[self.cache_index], cache.v_pool[self.cache_index]
        rows = cache.kv_rows(batch, T)
        scales = {}
        if self.kv_fp8:
            if k_pool.dtype != torch.float8_e4m3fn:
                raise ValueError(
                    f"layer {self.layer_idx}: the model's KV cache is FP8 but the pool is "
                    f"{k_pool.dtype}: build the HybridCache with kv_dtype=model.kv_dtype"
                )
            scales = {"k_scale": self.k_proj.k_scale, "v_scale": self.v_proj.v_scale}
            k = ops.fp8_quantize(k, scales["k_scale"])
            v = ops.fp8_quantize(v, scales["v_scale"])
        k_pool[rows] = k
        v_pool[rows] = v
        if batch.is_decode:
            o = ops.attention_decode(
                q,
                k_pool,
                v_pool,
                cache.req_to_token,
                batch.slots,
                batch.context_lens + 1,
                self.scale,
                **scales,
            )
        else:
            o = ops.attention_prefill(
                q,
                k_pool,
                v_pool,
                cache.req_to_token,
                batch.slots,
                batch.cu_seqlens,
                batch.context_lens,
                self.scale,
                **scales,
            )
        return self.o_proj(o.reshape(T, self.num_heads * self.head_dim))
