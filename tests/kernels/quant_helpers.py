"""Inputs shared by the quantized-kernel tests (CPU, Triton interpreter): routing, random
quantized weights, and a relative-error check."""

import torch

from kernels.moe_experts_nvfp4 import Nvfp4Weight
from kernels.quant_formats import fp8_scale, quantize_fp8, quantize_nvfp4


def routing(T, E, k, seed, skip_experts=()):
    """Distinct experts per token, never any of skip_experts; random combine weights.
    Returns (topk_weights [T, k] fp32, topk_ids [T, k] int32)."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in skip_experts])
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:k]] for _ in range(T)])
    return torch.rand(T, k, generator=g) * 2.5 / k, ids.to(torch.int32)


def randn(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fp8_per_expert(w):
    """w [E, N, K] fp32 -> (e4m3 [E, N, K], scale [E] fp32), one ModelOpt scale per expert."""
    scale = torch.stack([fp8_scale(we) for we in w])
    return quantize_fp8(w, scale), scale


def nvfp4(w):
    """w [E, N, K] fp32 -> Nvfp4Weight."""
    return Nvfp4Weight(*quantize_nvfp4(w))


def e4m3_equal(a, b):
    """Both float8_e4m3fn and equal bit for bit (an E4M3 NaN or signed zero compares too)."""
    assert a.dtype == b.dtype == torch.float8_e4m3fn, (a.dtype, b.dtype)
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def rel_err(out, ref):
    """max|out - ref| / max|ref| in fp32; NaN never passes."""
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)
