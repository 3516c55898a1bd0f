"""A quantized model's layers against unquantized twins, one layer at a time (CPU and GPU tests).

The twin of layer i is an unquantized `Block`: either the dequantized layer
(`dequantized_block`: the same quantized weights, static activation scales and FP8 KV cache,
dequantized, run through the bf16 kernels: what the checkpoint's numbers mean, computed the
plain way), or the original weights the layer was quantized from (`fullsize.random_block`).
Every layer runs on the twin path's input and starting state, so differences cannot compound
across layers; twins are built one at a time, so a quantized full-size model and one bf16
layer are all the GPU ever holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from kernels.quant_formats import dequant_fp8, quantize_fp8
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.linear import Linear
from workers.model.moe import ExpertStack, RoutedExperts
from workers.model.nemotron_h import Block, NemotronH
from workers.model.quant import FP8, QuantPlan


def token_cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)


def _fake_quant(scale: torch.Tensor):
    """A pre-hook rounding a module's input to the E4M3 grid of its static scale, as a W8A8
    kernel reads it."""

    def hook(module, args):
        x = args[0]
        return (dequant_fp8(quantize_fp8(x, scale), scale).to(x.dtype), *args[1:])

    return hook


@torch.no_grad()
def dequantized_block(llm: NemotronH, i: int) -> Block:
    """Layer i of `llm` with its quantized layers' weights dequantized; FP8 layers' inputs
    rounded to their static scales by hooks, KV cache FP8 with the same scales. Only what the
    FP8 experts' kernel does inside (h rounded to down's input scale) is not reproduced."""
    block = llm.layers[i]
    dtype, device = llm.embeddings.weight.dtype, llm.embeddings.weight.device
    twin = Block(llm.config, i, QuantPlan(kv_fp8=llm.plan.kv_fp8), device="meta", dtype=dtype)
    twin.to_empty(device=device)
    for name, mod in twin.named_modules():
        src = block.get_submodule(name)
        if isinstance(mod, Linear):
            mod.weight.copy_(src.dequantized())
            for leaf in ("k_scale", "v_scale"):
                if hasattr(src, leaf):
                    getattr(mod, leaf).copy_(getattr(src, leaf))
            if src.fmt == FP8:
                mod.register_forward_pre_hook(_fake_quant(src.input_scale))
        elif isinstance(mod, RoutedExperts) and src.fmt == FP8:
            mod.register_forward_pre_hook(_fake_quant(src.up_proj.input_scale.amax()))
        elif isinstance(mod, ExpertStack):
            for j in range(mod.weight.shape[0]):
                mod.weight[j].copy_(src.dequantized(j))
        else:
            own = itertools.chain(
                mod.named_parameters(recurse=False), mod.named_buffers(recurse=False)
            )
            for leaf, t in own:
                t.copy_(getattr(src, leaf))
    return twin.eval()


@torch.no_grad()
def compare_to_twins(
    llm: NemotronH, twin_of: Callable[[int], Block], steps: list, twin_kv: torch.dtype
) -> list[torch.Tensor]:
    """steps: [(embeds [T, D], new lens per sequence, context lens)], run in order on the same
    slots -> per layer, the token cosines of its mixer output against its twin's, all steps.
    twin_kv: the twins' KV cache dtype.

    The twin path goes end to end; each quantized layer gets the twin path's input and, for a
    Mamba layer, the twin path's state before the step (its own KV cache it keeps: it wrote it
    from the same inputs)."""
    c, device = llm.config, llm.embeddings.weight.device
    dtype = llm.embeddings.weight.dtype
    n_seqs = len(steps[0][1])
    capacity = sum(sum(lens) for _, lens, _ in steps) + 1
    ours = HybridCache(c, n_seqs, capacity, capacity, device, dtype, llm.kv_dtype)
    twins = HybridCache(c, n_seqs, capacity, capacity, device, dtype, twin_kv)
    slots = [ours.alloc_slot() for _ in range(n_seqs)]
    assert [twins.alloc_slot() for _ in range(n_seqs)] == slots
    batches = []
    for _, lens, ctx in steps:
        for cache in (ours, twins):
            cache.reserve(slots, [x + n for x, n in zip(ctx, lens, strict=True)])
        batches.append(ForwardBatch.build(lens, slots, ctx, device))
    state = [(embeds, None) for embeds, _, _ in steps]
    cosines = []
    for i, block in enumerate(llm.layers):
        twin = twin_of(i)
        layer_cos = []
        for s, batch in enumerate(batches):
            hidden, residual = state[s]
            if c.pattern[i] == "M":
                j = block.mixer.cache_index
                ours.conv_state[j].copy_(twins.conv_state[j])
                ours.ssm_state[j].copy_(twins.ssm_state[j])
            got, _ = block(hidden, residual, batch, ours)
            want, new_residual = twin(hidden, residual, batch, twins)
            layer_cos.append(token_cos(got, want))
            state[s] = (want, new_residual)
        cosines.append(torch.cat(layer_cos))
        del twin
    return cosines
