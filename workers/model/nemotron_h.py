"""NemotronH: the hybrid Mamba-2 / attention / MoE language model (docs/model.md §1).

Letters: T packed tokens, D hidden, V vocab.

The layer stack comes from `config.pattern`, one character per layer, through `BLOCKS`.
Every block is pre-norm, `x = x + mixer(norm(x))`; the residual add is fused into the
next norm (`ops.rmsnorm(x, w, eps, residual)`), so blocks pass (hidden, residual) along.

Parameter names equal the checkpoint keys under `language_model.backbone.` (plus
`lm_head.weight` for `language_model.lm_head.weight`), except the stacked MoE experts
(see `moe.ExpertStack`). The `QuantPlan` says which linears are FP8 or NVFP4
(workers/model/quant.py); router, embeddings, norms and lm_head stay in the model dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.model import ops
from workers.model.attention import Attention
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.config import LLMConfig
from workers.model.host_copy import host_to_device
from workers.model.linear import Linear
from workers.model.mamba2_mixer import Mamba2Mixer
from workers.model.moe import MoE
from workers.model.quant import BF16, QuantPlan

# What `precision` says of an unquantized model: its dtype.
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

BLOCKS: dict[str, type[nn.Module]] = {"M": Mamba2Mixer, "*": Attention, "E": MoE}


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, device=device, dtype=dtype))
        self.eps = eps

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        out_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x[T,D], residual[T,D] | None -> (normed x + residual, x + residual); the normed
        output in E4M3, quantized by out_scale, when given."""
        return ops.rmsnorm(x, self.weight, self.eps, residual, out_scale)


class Block(nn.Module):
    def __init__(self, config: LLMConfig, layer_idx: int, plan: QuantPlan, device=None, dtype=None):
        super().__init__()
        kind = config.pattern[layer_idx]
        if kind not in BLOCKS:
            raise ValueError(
                f"layer {layer_idx}: unknown block type {kind!r} in the hybrid pattern "
                f"(known: {''.join(BLOCKS)})"
            )
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, device=device, dtype=dtype)
        self.mixer = BLOCKS[kind](config, layer_idx, plan, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
        cache: HybridCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Mamba's first op is one linear: an FP8 in_proj gets its input quantized by the norm.
        # Attention's q, k, v and the MoE's router and experts read the normed x with
        # different scales or in bf16.
        scale = None
        if isinstance(self.mixer, Mamba2Mixer):
            scale = self.mixer.in_proj.fused_input_scale(x.dtype)
        normed, residual = self.norm(x, residual, scale)
        return self.mixer(normed, batch, cache), residual


class NemotronH(nn.Module):
    """The LLM. `device="meta"` builds it without memory (see fullsize.py)."""

    def __init__(
        self,
        config: LLMConfig,
        device=None,
        dtype: torch.dtype = torch.float32,
        plan: QuantPlan | None = None,
    ):
        super().__init__()
        self.config = config
        self.plan = plan = plan or QuantPlan()
        kw = {"device": device, "dtype": dtype}
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(Block(config, i, plan, **kw) for i in range(config.num_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.norm_eps, **kw)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, BF16, **kw)

    @property
    def precision(self) -> str:
        """What the weights are: fp8 / nvfp4 when quantized, else the dtype (bf16, fp32)."""
        if self.plan.precision != BF16:
            return self.plan.precision
        return _DTYPE_NAMES.get(self.embeddings.weight.dtype, str(self.embeddings.weight.dtype))

    @property
    def kv_dtype(self) -> torch.dtype:
        """The dtype of the KV cache pools this model writes (HybridCache's kv_dtype)."""
        return torch.float8_e4m3fn if self.plan.kv_fp8 else self.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the model computes (the embedding table may wait in host memory)."""
        return self.norm_f.weight.device

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids[T] on any device -> [T,D] on the model's device."""
        table = self.embeddings.weight
        if table.device == self.device:
            return self.embeddings(host_to_device(ids, self.device))
        # The table is in pinned host memory (`keep_embeddings_on_host`): gather the rows
        # there, then copy T x D values instead of holding V x D on the GPU.
        rows = nn.functional.embedding(ids.cpu(), table)
        return host_to_device(rows, self.device)

    def keep_embeddings_on_host(self) -> None:
        """Move the embedding table (V x D: 0.66 GiB at full size) to pinned host memory, for
        a GPU memory cap that needs the room (memory_plan.plan_for); `embed` serves it."""
        table = self.embeddings.weight.detach().cpu()
        self.embeddings.weight = nn.Parameter(table.pin_memory(), requires_grad=False)

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
