"""benchmarks.triton_compiles on the GPU: a compile is counted once per new specialisation of
a kernel's arguments, and not when the same one runs again."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs

from benchmarks.triton_compiles import TritonCompiles

pytestmark = pytest.mark.gpu


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


def test_each_new_specialisation_compiles_once_and_is_counted():
    x = torch.zeros(64, device="cuda")
    with TritonCompiles() as compiles:
        for n in (17, 17, 32, 33):  # 32 is divisible by 16: a second specialisation of n
            _add_one[(1,)](x, n, BLOCK=64)
        torch.cuda.synchronize()
    assert compiles.kernels == {"_add_one": 2} and compiles.seconds > 0
    first, second = compiles.variants  # n as a plain integer, then as one divisible by 16
    assert first.startswith("_add_one[") and first != second
    assert knobs.runtime.jit_cache_hook is None  # put back
    assert torch.equal(x[:17].cpu(), torch.full((17,), 4.0))


def test_new_batch_shapes_do_not_recompile_the_varlen_and_moe_kernels():
    """Packed prefill batches of other token and sequence counts (1, multiples of 16, odd) run
    the kernels compiled for the first batch: their batch-sized integers are unspecialised and
    the block table's columns stay 16-byte aligned (the kernels W-doc compiled 34 times inside
    its timed run, RESULTS.md session 11)."""
    from kernels.causal_conv1d import causal_conv1d_varlen
    from kernels.moe_align import ONE_PROGRAM_MAX_A
    from kernels.moe_experts import GemmConfig, moe_experts
    from kernels.ssd_scan import ssd_scan

    dev, bf16 = "cuda", torch.bfloat16
    H, P, G, N, C, K, E, D, inner, top_k = 4, 16, 1, 16, 32, 4, 8, 64, 32, 2
    A = -torch.rand(H, device=dev)
    conv_w = torch.randn(C, K, device=dev, dtype=bf16)
    conv_b = torch.zeros(C, device=dev, dtype=bf16)
    up = torch.randn(E, inner, D, device=dev, dtype=bf16) * 0.05
    down = torch.randn(E, D, inner, device=dev, dtype=bf16) * 0.05
    gemm = GemmConfig(64, 64, 32, 0, 4, 2)  # group_m 0: the row-block count, batch-sized

    def batch(lens):
        T, B = sum(lens), len(lens)
        cu = torch.tensor([0, *lens], device=dev).cumsum(0).to(torch.int32)
        x = torch.randn(T, H, P, device=dev, dtype=bf16)
        Bm, Cm = (torch.randn(T, G, N, device=dev, dtype=bf16) for _ in range(2))
        ones = torch.ones(H, device=dev)
        ssd_scan(x, torch.randn(T, H, device=dev), A, Bm, Cm, ones, ones, cu)
        state = torch.zeros(B, C, K - 1, device=dev, dtype=bf16)
        slots = torch.arange(B, device=dev)
        has_init = torch.zeros(B, device=dev, dtype=torch.bool)
        causal_conv1d_varlen(torch.randn(T, C, device=dev, dtype=bf16), conv_w, conv_b, cu,
                             state, slots, has_init)  # fmt: skip
        ids = torch.randint(0, E, (T, top_k), device=dev, dtype=torch.int32)
        weights = torch.rand(T, top_k, device=dev)
        moe_experts(torch.randn(T, D, device=dev, dtype=bf16), up, down, weights, ids, gemm)

    # compile what the others reuse: moe_align's one program (up to ONE_PROGRAM_MAX_A
    # assignments) and its three kernels (past it)
    assert 317 * top_k <= ONE_PROGRAM_MAX_A < 2117 * top_k
    batch([300, 17])
    batch([2100, 17])
    with TritonCompiles() as compiles:
        for lens in ([1], [16], [512, 512], [333, 1, 70], [4096, 17, 5, 5, 5]):
            batch(lens)
        torch.cuda.synchronize()
    assert compiles.count == 0, compiles.kernels


def test_fp8_layers_compile_nothing_after_the_warm_up_sizes():
    """Forwards at linear.warm_sizes' token counts compile every tiling fp8_linear picks for
    the model's FP8 layers, from bf16 and from E4M3 inputs: other prefill sizes then compile
    nothing (session 20: 2-3 tilings compiled inside W-video's timed run)."""
    from kernels.quant_formats import fp8_scale, quantize_fp8
    from workers.model.linear import Linear, warm_sizes
    from workers.model.quant import FP8

    layers = torch.nn.ModuleList(Linear(1024, n, FP8, device="cuda") for n in (2688, 4352))
    for layer in layers:
        w = torch.randn(layer.out_features, 1024, device="cuda") / 32
        layer.weight_scale.copy_(fp8_scale(w))
        layer.weight.copy_(quantize_fp8(w, layer.weight_scale))
        layer.input_scale.fill_(1 / 64)

    def forward(m):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        for layer in layers:
            layer(x)
            layer(quantize_fp8(x, layer.input_scale))  # a producer's E4M3 output

    sizes = warm_sizes(layers, 16384)
    assert sizes[0] == 1 and sizes[-1] <= 16384 and len(sizes) >= 4
    for m in sizes:
        forward(m)
    with TritonCompiles() as compiles:
        for m in (2, 63, 65, 200, 257, 700, 1500, 3000, 5200, 9999, 16384):
            forward(m)
        torch.cuda.synchronize()
    assert compiles.count == 0, compiles.variants
