"""Static activation and KV scales for weights quantized at load (ModelOpt's "max" calibration).

A published FP8 or NVFP4 checkpoint carries the scales NVIDIA calibrated on real data. A BF16
checkpoint quantized at load, and the random full-size model, have none: the LLM runs once
over calibration tokens while hooks raise each scale to what its module sees, times
`HEADROOM`. Every hook runs before the module that reads its scale, so the calibration
forward itself never clips.

  FP8 linear          input_scale = amax(x) / 448
  FP8 routed experts  up: amax(x) / 448; down: amax(relu(up x)²) / 448 over the routed
                      (token, expert) pairs; every expert gets the layer's value (the kernel
                      takes one per MoE, the largest)
  NVFP4 experts       input_scale = amax / (6 · 448), ModelOpt's NVFP4 activation scale:
                      W4A16 never reads it, it completes the published layout
  FP8 KV cache        k_scale = amax(k) / 448, v_scale = amax(v) / 448

The calibration tokens are random ids, not text: the headroom covers inputs (real text,
media embeddings) that reach further. E4M3 resolves about 15 binades at full relative
precision, so giving up one to headroom costs nothing measurable; clipping would.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle

from kernels.quant_formats import E2M1_MAX, E4M3_MAX
from workers.model.attention import Attention
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.linear import Linear, inputs_unfused
from workers.model.moe import RoutedExperts
from workers.model.nemotron_h import NemotronH
from workers.model.quant import BF16, FP8

HEADROOM = 2.0
CALIBRATION_TOKENS = 256
_TINY = torch.finfo(torch.float32).tiny  # a scale of an all-zero input must not divide by 0


def _raise(scale: torch.Tensor, amax: torch.Tensor, bound: float) -> None:
    scale.copy_(torch.maximum(scale, (amax.float() * HEADROOM / bound).clamp(min=_TINY)))


def _experts_hook(experts: RoutedExperts, args) -> None:
    x, _, topk_ids = args
    bound = E4M3_MAX if experts.fmt == FP8 else E4M3_MAX * E2M1_MAX
    _raise(experts.up_proj.input_scale, x.abs().amax(), bound)
    h_amax = torch.zeros((), device=x.device)
    for e in topk_ids.unique().tolist():
        tokens = (topk_ids == e).any(dim=-1)
        h = torch.relu(x[tokens].float() @ experts.up_proj.dequantized(e).T).square()
        h_amax = torch.maximum(h_amax, h.amax())
    _raise(experts.down_proj.input_scale, h_amax, bound)


def _hooks(module: torch.nn.Module) -> list[RemovableHandle]:
    """Zero the module's calibrated scales and hook what raises them."""
    if isinstance(module, Linear) and module.fmt == FP8:
        module.input_scale.zero_()
        return [
            module.register_forward_pre_hook(
                lambda m, args: _raise(m.input_scale, args[0].abs().amax(), E4M3_MAX)
            )
        ]
    if isinstance(module, RoutedExperts) and module.fmt != BF16:
        module.up_proj.input_scale.zero_()
        module.down_proj.input_scale.zero_()
        return [module.register_forward_pre_hook(_experts_hook)]
    if isinstance(module, Attention) and module.kv_fp8:
        module.k_proj.k_scale.zero_()
        module.v_proj.v_scale.zero_()
        return [
            module.k_proj.register_forward_hook(
                lambda m, args, out: _raise(m.k_scale, out.abs().amax(), E4M3_MAX)
            ),
            module.v_proj.register_forward_hook(
                lambda m, args, out: _raise(m.v_scale, out.abs().amax(), E4M3_MAX)
            ),
        ]
    return []


@torch.no_grad()
def calibrate(llm: NemotronH, num_tokens: int = CALIBRATION_TOKENS, seed: int = 0) -> None:
    """Set every static scale of `llm`'s quantized layers from one prefill of `num_tokens`
    random ids (two sequences)."""
    hooks = [h for m in llm.modules() for h in _hooks(m)]
    if not hooks:
        return
    c = llm.config
    device, dtype = llm.device, llm.embeddings.weight.dtype
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, c.vocab_size, (num_tokens,), generator=gen).to(device)
    lens = [num_tokens // 2, num_tokens - num_tokens // 2]
    cache = HybridCache(c, 2, num_tokens, num_tokens, device, dtype, llm.kv_dtype)
    slots = [cache.alloc_slot() for _ in lens]
    cache.reserve(slots, lens)
    try:
        with inputs_unfused():  # the hooks read each FP8 layer's input in bf16
            llm(llm.embed(ids), ForwardBatch.build(lens, slots, [0, 0], device), cache)
    finally:
        for h in hooks:
            h.remove()
