"""GQA self-attention of NemotronH (docs/model.md §1.3).

Letters: T packed tokens, B sequences, D hidden, Hq query heads, Hkv KV heads, d head dim.

No positional encoding of any kind: q and k go into the softmax as projected (order comes
from the Mamba layers). New K/V rows are written to the layer's pool first, then the
kernel attends over the whole cached context of each sequence through req_to_token.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.cache import ForwardBatch, HybridCache
from workers.model import ops
from workers.model.config import LLMConfig


class Attention(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        c = config
        self.cache_index = c.attention_layers.index(layer_idx)
        self.num_heads, self.num_kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.scale = c.head_dim**-0.5
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, **kw)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, **kw)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, **kw)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, **kw)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: HybridCache) -> torch.Tensor:
        """x[T,D] (normed) -> [T,D]; the batch's KV pool rows must be reserved."""
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        k_pool, v_pool = cache.k_pool[self.cache_index], cache.v_pool[self.cache_index]
        rows = cache.kv_rows(batch, T)
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
            )
        return self.o_proj(o.reshape(T, self.num_heads * self.head_dim))
