"""Quantized kernels (FP8 dense / MoE, NVFP4 MoE, FP8 KV attention) against their torch
references at the real shapes (docs/model.md), decode and prefill sizes, on CUDA; the producers
that quantize for an FP8 linear (norms, the relu² epilogue) against the unfused ops.

Run with `pytest -m gpu tests/gpu/test_kernels_quant.py`. Skipped under TRITON_INTERPRET=1,
which the root conftest sets only on machines without CUDA.
"""

import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kernels.attention import (
    attention_decode,
    attention_decode_ref,
    attention_prefill,
    attention_prefill_ref,
)
from kernels.fp8_linear import fp8_linear, fp8_linear_ref, fp8_quantize
from kernels.fp8_linear import pick_config as fp8_linear_config
from kernels.moe_experts_fp8 import moe_experts_fp8, moe_experts_fp8_ref
from kernels.moe_experts_fp8 import pick_config as fp8_moe_config
from kernels.moe_experts_nvfp4 import (
    Nvfp4Weight,
    moe_experts_nvfp4,
    moe_experts_nvfp4_ref,
    pick_config,
)
from kernels.quant_formats import fp8_scale, quantize_fp8
from kernels.rmsnorm import gated_group_rmsnorm, rmsnorm
from tests.gpu.test_kernels_moe_attn import HEAD_DIM, HQ, SCALE, assert_rel, paged
from tests.kernels.quant_helpers import e4m3_equal

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton interpreter on"),
]

D, E, TOP_K, INNER, SHARED_INNER = 2688, 128, 6, 1856, 3712
# (N, K) of the FP8 checkpoint's dense layers: Mamba in_proj / out_proj, shared expert up /
# down, attention o_proj, attention k (and v) of the FP8 checkpoint.
DENSE = {
    "in_proj": (10304, 2688),
    "out_proj": (2688, 4096),
    "shared_up": (SHARED_INNER, D),
    "shared_down": (D, SHARED_INNER),
    "o_proj": (D, 4096),
    "k_proj": (256, D),
}
TOKENS = [1, 64, 256, 4096, 16384]


def gen(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def fp8_weight(N, K, g):
    w = torch.randn(N, K, device="cuda", generator=g) * K**-0.5
    scale = fp8_scale(w)
    return quantize_fp8(w, scale), scale


@pytest.mark.parametrize("fast_accum", [False, True])
@pytest.mark.parametrize("M", TOKENS)
@pytest.mark.parametrize("layer", list(DENSE))
def test_fp8_linear(layer, M, fast_accum):
    """pick_config's tiling, with and without fast accumulation (no promotion into fp32
    every BLOCK_K): the same bound either way."""
    N, K = DENSE[layer]
    g = gen(M + N)
    x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    w, ws = fp8_weight(N, K, g)
    xs = fp8_scale(x) * 0.8  # a static scale that clips the largest activations
    args = (x, w, ws, xs)
    cfg = replace(fp8_linear_config(M, N, x.device), fast_accum=fast_accum)
    assert_rel(f"{layer} M={M}", fp8_linear(*args, config=cfg), fp8_linear_ref(*args))


def test_fp8_linear_quantizes_like_torch():
    """Identity weight and a power-of-two scale: y = e4m3(x / s) * s bit for bit, so the
    GPU's fp32 -> E4M3 conversion rounds (ties to even) and saturates as torch does."""
    g = gen(5)
    x = (torch.randn(300, D, device="cuda", generator=g) * 40).to(torch.bfloat16)
    eye = torch.eye(D, device="cuda").to(torch.float8_e4m3fn)
    one, xs = torch.tensor(1.0, device="cuda"), torch.tensor(0.125, device="cuda")
    assert torch.equal(fp8_linear(x, eye, one, xs).float(), quantize_fp8(x, xs).float() * xs)


def e4m3_steps(a, b):
    """How many E4M3 grid steps apart each pair of codes is (+0 and -0 the same point)."""

    def ordinal(q):
        code = q.view(torch.uint8).int()
        return torch.where(code >= 128, 128 - code, code)

    return (ordinal(a) - ordinal(b)).abs()


@pytest.mark.parametrize("T", [64, 16384])
def test_rmsnorm_e4m3_out_equals_quantized_unfused(T):
    """The norm before Mamba's FP8 in_proj: fp8_quantize of its bf16 output, up to the order
    in which a row's squares are summed (the fused kernel's layout holds 16 values a thread,
    the plain one 8): a code may move by one step where rstd's last bit moved, rarely."""
    g = gen(T + 1)
    x, res = (torch.randn(T, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    w = (1 + 0.2 * torch.randn(D, device="cuda", generator=g)).to(torch.bfloat16)
    out, res_out = rmsnorm(x, w, 1e-5, res)
    scale = fp8_scale(out) * 0.8  # a static scale that clips the largest outputs
    q, q_res_out = rmsnorm(x, w, 1e-5, res, out_scale=scale)
    steps = e4m3_steps(q, fp8_quantize(out, scale))
    moved = int((steps > 0).sum())
    print(f"rmsnorm E4M3 out, T = {T}: {moved} of {steps.numel()} codes one step apart")
    assert q.dtype == torch.float8_e4m3fn and int(steps.max()) <= 1
    assert moved <= 1e-4 * steps.numel()
    assert torch.equal(q_res_out, res_out)


@pytest.mark.parametrize("T", [64, 16384])
def test_gated_group_rmsnorm_e4m3_out_equals_quantized_unfused(T):
    """Mamba's gated norm before its FP8 out_proj (d_inner 4096, groups of 512), z read in
    place from in_proj's output: bit for bit fp8_quantize of the bf16 output."""
    inner, group = DENSE["out_proj"][1], 512
    g = gen(T + 2)
    proj = torch.randn(T, DENSE["in_proj"][0], device="cuda", generator=g).to(torch.bfloat16)
    z = proj[:, :inner]
    y = torch.randn(T, inner, device="cuda", generator=g).to(torch.bfloat16)
    w = (1 + 0.2 * torch.randn(inner, device="cuda", generator=g)).to(torch.bfloat16)
    out = gated_group_rmsnorm(y, z, w, group, 1e-5)
    assert torch.equal(out, gated_group_rmsnorm(y, z.contiguous(), w, group, 1e-5))
    scale = fp8_scale(out) * 0.8
    assert e4m3_equal(gated_group_rmsnorm(y, z, w, group, 1e-5, scale), fp8_quantize(out, scale))


@pytest.mark.parametrize("M", [1, 64, 256, 16384])
def test_fp8_linear_relu2_epilogue_equals_unfused(M):
    """The shared expert's up projection (pick_config's tiling): relu(y)² quantized by down's
    input scale in the epilogue is bit for bit fp8_quantize(F.relu(y).square()) of bf16 y."""
    N, K = DENSE["shared_up"]
    g = gen(M + 3)
    x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    w, ws = fp8_weight(N, K, g)
    xs = fp8_scale(x) * 0.8
    h = F.relu(fp8_linear(x, w, ws, xs)).square()
    hs = fp8_scale(h) * 0.8
    assert e4m3_equal(fp8_linear(x, w, ws, xs, relu2_out_scale=hs), fp8_quantize(h, hs))


def routing(T, g):
    scores = torch.rand(T, E, device="cuda", generator=g)
    ids = scores.topk(TOP_K, dim=-1).indices.to(torch.int32)
    return torch.rand(T, TOP_K, device="cuda", generator=g), ids


@pytest.fixture(scope="module")
def fp8_experts():
    g = gen(0)
    up = torch.randn(E, INNER, D, device="cuda", generator=g) * D**-0.5
    down = torch.randn(E, D, INNER, device="cuda", generator=g) * INNER**-0.5
    up_s, down_s = up.abs().amax((1, 2)) / 448, down.abs().amax((1, 2)) / 448
    up_q, down_q = quantize_fp8(up, up_s), quantize_fp8(down, down_s)
    del up, down
    # Static activation scales as a calibration would give them for N(0, 1) inputs.
    x_s, h_s = torch.tensor(4.5 / 448, device="cuda"), torch.tensor(20.0 / 448, device="cuda")
    return up_q, down_q, up_s, down_s, x_s, h_s


@pytest.mark.parametrize("fast_accum", [False, True])
@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("T", TOKENS)
def test_moe_experts_fp8(T, tma, fast_accum, fp8_experts):
    """h = relu(.)^2 is rounded to E4M3 (3 mantissa bits) between the GEMMs: where the kernel's
    and the reference's fp32 sums of an up output differ in the last bits, h can round one E4M3
    step apart (up to 12.5 % of that element). Over 44 M outputs at 16 K tokens the largest
    such deviation reached 1.1 % of max|out| on the H100; the mean 3.5e-4 with promotion into
    fp32 every BLOCK_K, 1.2e-3 with fast accumulation (the tensor core's shorter accumulator
    puts more up sums across an E4M3 rounding boundary): its bound is half of bf16's relative
    step (2^-8), the promoted one stays at 1e-3. `tma`: pick_config's tiling with the weight
    (and h) tiles through TMA or pointer loads (the prefill default takes TMA on Hopper)."""
    g = gen(T)
    x = torch.randn(T, D, device="cuda", generator=g).to(torch.bfloat16)
    args = (x, *fp8_experts, *routing(T, g))
    cfg = fp8_moe_config(T, TOP_K, E, (D, INNER), x.device)
    cfg = replace(cfg, tma=tma, fast_accum=fast_accum)
    out, ref = moe_experts_fp8(*args, config=cfg), moe_experts_fp8_ref(*args)
    assert_rel(f"T={T}", out, ref, bound=2e-2)
    mean = (out.float() - ref.float()).abs().mean().item()
    bound = 2**-9 if fast_accum else 1e-3
    assert mean <= bound * ref.float().abs().max().item(), f"T={T}: mean diff {mean:.3e}"


def random_nvfp4(N, K, g):
    """Every byte value, block scales over two octaves, scale_2 giving unit-variance rows."""
    packed = torch.randint(0, 256, (E, N, K // 2), device="cuda", generator=g, dtype=torch.uint8)
    block = torch.rand(E, N, K // 16, device="cuda", generator=g) * 3 + 1
    scale_2 = torch.full((E,), 0.4 * K**-0.5, device="cuda")
    return Nvfp4Weight(packed, block.to(torch.float8_e4m3fn), scale_2)


@pytest.fixture(scope="module")
def nvfp4_experts():
    g = gen(1)
    return random_nvfp4(INNER, D, g), random_nvfp4(D, INNER, g)


@pytest.mark.parametrize("T", TOKENS)
def test_moe_experts_nvfp4(T, nvfp4_experts):
    """pick_config's tiling: plain at decode sizes, swapped (weights as wgmma's register
    operand) at prefill sizes."""
    g = gen(T)
    x = torch.randn(T, D, device="cuda", generator=g).to(torch.bfloat16)
    args = (x, *nvfp4_experts, *routing(T, g))
    assert_rel(f"T={T}", moe_experts_nvfp4(*args), moe_experts_nvfp4_ref(*args))


@pytest.mark.parametrize("T", [64, 4096])
def test_moe_experts_nvfp4_ptx_equals_triton_dequant(T, nvfp4_experts):
    """The inline-PTX nibble decoding builds the same bf16 weights as the Triton integer ops:
    with the same tiling the outputs are bit-identical."""
    g = gen(T + 1)
    x = torch.randn(T, D, device="cuda", generator=g).to(torch.bfloat16)
    args = (x, *nvfp4_experts, *routing(T, g))
    cfg = pick_config(T, TOP_K, E)
    plain = moe_experts_nvfp4(*args, config=replace(cfg, ptx_dequant=False))
    assert torch.equal(moe_experts_nvfp4(*args, config=replace(cfg, ptx_dequant=True)), plain)


def fp8_paged(lengths, g):
    k, v, req = paged(lengths, g)
    ks, vs = fp8_scale(k) * 1.1, fp8_scale(v)
    return quantize_fp8(k, ks), quantize_fp8(v, vs), req, ks, vs


def test_attention_prefill_fp8_kv():
    g = gen(2)
    ctx_lens, new_lens = [0, 700, 1, 129, 2000], [1000, 333, 1, 64, 1]
    k, v, req, ks, vs = fp8_paged([c + n for c, n in zip(ctx_lens, new_lens, strict=True)], g)
    cu = torch.zeros(len(new_lens) + 1, device="cuda", dtype=torch.int32)
    cu[1:] = torch.tensor(new_lens, device="cuda").cumsum(0)
    q = torch.randn(int(cu[-1]), HQ, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
    slots = torch.arange(1, len(new_lens) + 1, device="cuda")
    ctx = torch.tensor(ctx_lens, device="cuda", dtype=torch.int32)
    args = (q, k, v, req, slots, cu, ctx, SCALE, ks, vs)
    assert_rel("prefill fp8 kv", attention_prefill(*args), attention_prefill_ref(*args))


@pytest.mark.parametrize("B", [1, 37, 256])
def test_attention_decode_fp8_kv(B):
    g = gen(B)
    lengths = torch.randint(1, 3000, (B,), generator=torch.Generator().manual_seed(B)).tolist()
    k, v, req, ks, vs = fp8_paged(lengths, g)
    q = torch.randn(B, HQ, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
    slots = torch.arange(1, B + 1, device="cuda")
    seq_lens = torch.tensor(lengths, device="cuda", dtype=torch.int32)
    args = (q, k, v, req, slots, seq_lens, SCALE, ks, vs)
    assert_rel(f"decode fp8 kv B={B}", attention_decode(*args), attention_decode_ref(*args))
