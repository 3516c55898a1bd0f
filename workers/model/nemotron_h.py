"""NemotronH: the hybrid Mamba-2 / attention / MoE language model (docs/model.md §1).

Letters: T packed tokens, D hidden, V vocab.

The layer stack comes from `config.pattern`, one character per layer, through `BLOCKS`.
Every block is pre-norm, `x = x + mixer(norm(x))`; the residual add is fused into the
next norm (`ops.rmsnorm(x, w, eps, residual)`), so blocks pass (hidden, residual) along.

Parameter names equal the checkpoint keys under `language_model.backbone.` (plus
`lm_head.weight` for `language_model.lm_head.weight`), except the stacked MoE experts
(see `moe.MoE.load_expert`).
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.cache import ForwardBatch, HybridCache
from workers.model import ops
from workers.model.attention import Attention
from workers.model.config import LLMConfig
from workers.model.mamba2_mixer import Mamba2Mixer
from workers.model.moe import MoE

BLOCKS: dict[str, type[nn.Module]] = {"M": Mamba2Mixer, "*": Attention, "E": MoE}


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, device=device, dtype=dtype))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x[T,D], residual[T,D] | None -> (normed x + residual, x + residual)."""
        return ops.rmsnorm(x, self.weight, self.eps, residual)


class Block(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        kind = config.pattern[layer_idx]
        if kind not in BLOCKS:
            raise ValueError(
                f"layer {layer_idx}: unknown block type {kind!r} in the hybrid pattern "
                f"(known: {''.join(BLOCKS)})"
            )
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, device=device, dtype=dtype)
        self.mixer = BLOCKS[kind](config, layer_idx, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
        cache: HybridCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = self.norm(x, residual)
        return self.mixer(normed, batch, cache), residual


class NemotronH(nn.Module):
    """The LLM. `device="meta"` builds it without memory (see fullsize.py)."""

    def __init__(self, config: LLMConfig, device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        kw = {"device": device, "dtype": dtype}
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(Block(config, i, **kw) for i in range(config.num_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.norm_eps, **kw)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, **kw)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids[T] -> [T,D]."""
        return self.embeddings(ids)

    @torch.no_grad()
    def forward(
        self, embeds: torch.Tensor, batch: ForwardBatch, cache: HybridCache
    ) -> torch.Tensor:
        """embeds[T,D] packed per `batch` -> hidden[T,D] after norm_f; advances `cache`."""
        hidden, residual = embeds, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, batch, cache)
        hidden, _ = self.norm_f(hidden, residual)
        return hidden

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden[n,D] -> [n,V] fp32."""
        return self.lm_head(hidden).float()
