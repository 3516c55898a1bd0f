"""Dense FP8 W8A8 linear: the reference against plain dequantize-then-fp32 math."""

import pytest
import torch
import torch.nn.functional as F

from kernels.fp8_linear import (
    Fp8Config,
    fp8_linear,
    fp8_linear_ref,
    fp8_quantize,
    fp8_quantize_ref,
    tiling,
    tilings,
)
from kernels.quant_formats import dequant_fp8, fp8_scale, quantize_fp8
from tests.kernels.moe_attn_helpers import assert_close
from tests.kernels.quant_helpers import cosine, e4m3_equal, randn


def layer(M, K, N, seed, x_scale=1.0):
    x = randn(M, K, seed=seed, scale=x_scale).to(torch.bfloat16)
    w = randn(N, K, seed=seed + 1, scale=K**-0.5)
    ws = fp8_scale(w)
    return x, quantize_fp8(w, ws), ws, fp8_scale(x.float()) * 1.25, w


def test_ref_is_dequantized_matmul():
    x, wq, ws, xs, _ = layer(5, 48, 40, seed=0)
    want = dequant_fp8(quantize_fp8(x, xs), xs) @ dequant_fp8(wq, ws).t()
    out = fp8_linear_ref(x, wq, ws, xs)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 40)
    assert_close("ref", out, want.to(torch.bfloat16))


def test_ref_close_to_unquantized():
    x, wq, ws, xs, w = layer(16, 64, 32, seed=1)
    assert cosine(fp8_linear_ref(x, wq, ws, xs), x.float() @ w.t()) > 0.995


def test_ref_saturates_activations_at_the_static_scale():
    x, wq, ws, xs, _ = layer(4, 32, 16, seed=2)
    x[0, 3] = 1e4  # far beyond 448 * input_scale
    clipped = x.clone()
    clipped[0, 3] = 448 * xs
    assert torch.equal(fp8_linear_ref(x, wq, ws, xs), fp8_linear_ref(clipped, wq, ws, xs))


@pytest.mark.parametrize("M, K, N", [(1, 32, 16), (5, 48, 40), (17, 64, 24), (33, 96, 50)])
def test_kernel_matches_ref(M, K, N):
    x, wq, ws, xs, _ = layer(M, K, N, seed=M)
    out = fp8_linear(x, wq, ws, xs)
    assert out.dtype == torch.bfloat16
    assert_close(f"{M}x{K}x{N}", out, fp8_linear_ref(x, wq, ws, xs))


def test_kernel_quantizes_x_exactly_like_quantize_fp8():
    """Identity weight, power-of-two scales: y = e4m3(x / s) * s bit for bit, across E4M3
    midpoints (ties to even), subnormals and saturation."""
    grid = torch.arange(1, 64, dtype=torch.float32)
    values = torch.cat([
        1 + grid / 128,  # 1 .. 1.49: every midpoint between E4M3 steps of 1/8
        grid * 2**-12,  # the subnormal range and its midpoints (steps of 2^-9)
        torch.tensor([448.0, 464.0, 480.0, 1e4, 0.0]),  # saturation at 448
    ])  # fmt: skip
    K = 32
    x = torch.cat([values, -values])
    x = torch.cat([x, torch.zeros((-len(x)) % K)]).view(-1, K).to(torch.bfloat16)
    eye = torch.eye(K).to(torch.float8_e4m3fn)
    one, xs = torch.tensor(1.0), torch.tensor(0.5)
    out = fp8_linear(x, eye, one, xs)
    assert torch.equal(out.float(), quantize_fp8(x, xs).float() * xs)


@pytest.mark.parametrize(
    "variant",
    [{"quantize_first": True}, {"tma": True}, {"swap_ab": True}, {"swap_ab": True, "tma": True}],
)
def test_config_variants_equal_default(variant):
    x, wq, ws, xs, _ = layer(9, 80, 24, seed=4)  # edges in M, N and K (80 = 2.5 x 32)
    cfg = Fp8Config(16, 16, 32, 2, 4, 1, **variant)
    assert torch.equal(fp8_linear(x, wq, ws, xs, config=cfg), fp8_linear(x, wq, ws, xs))


@pytest.mark.parametrize(
    "variant", [{}, {"quantize_first": True}, {"tma": True}, {"swap_ab": True}]
)
def test_x_given_in_e4m3_skips_the_quantization(variant):
    """x already quantized by input_scale (as a producer's epilogue would hand it over): the
    same output as from bf16 x, in bf16, under every tiling; the reference agrees."""
    x, wq, ws, xs, _ = layer(9, 80, 24, seed=6)
    xq = fp8_quantize(x, xs)
    cfg = Fp8Config(16, 16, 32, 2, 4, 1, **variant)
    out = fp8_linear(xq, wq, ws, xs, config=cfg)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fp8_linear(x, wq, ws, xs, config=cfg))
    assert_close("e4m3 x", fp8_linear_ref(xq, wq, ws, xs), fp8_linear_ref(x, wq, ws, xs))


def test_fp8_quantize_equals_ref_for_power_of_two_scales():
    x = randn(3, 50, seed=5, scale=30.0).to(torch.bfloat16)
    xs = torch.tensor(0.25)
    assert torch.equal(fp8_quantize(x, xs).float(), fp8_quantize_ref(x, xs).float())


# pick_config's tilings on an H100 (decode: swapped up to 64 rows, 64 x 128 up to 256; prefill:
# 256 x 128 through TMA, x quantized first), then the in-load quantization of the interpreter's
# default and of a plain swapped tile.
RELU2_TILINGS = [(M, tiling(M, 72, sms=132, hopper=True)) for M in (1, 40, 200, 300)] + [
    (9, None),
    (9, Fp8Config(16, 16, 32, 2, 4, 1, swap_ab=True)),
]


@pytest.mark.parametrize("M, cfg", RELU2_TILINGS)
def test_relu2_epilogue_equals_unfused(M, cfg):
    """relu(y)² in E4M3 by a scale that clips the largest: bit for bit fp8_quantize of torch's
    relu().square() of the bf16 output, from bf16 and from E4M3 x; the reference likewise."""
    x, wq, ws, xs, _ = layer(M, 160, 72, seed=M)  # K = 1.25 x BLOCK_K 128: an edge in K
    y = fp8_linear(x, wq, ws, xs, config=cfg)
    hs = fp8_scale(F.relu(y).square()) * 0.6
    want = fp8_quantize(F.relu(y).square(), hs)  # the shared expert without the epilogue
    for a in (x, fp8_quantize(x, xs)):
        out = fp8_linear(a, wq, ws, xs, relu2_out_scale=hs, config=cfg)
        assert e4m3_equal(out, want), a.dtype
    y_ref = fp8_linear_ref(x, wq, ws, xs)
    ref = fp8_linear_ref(x, wq, ws, xs, relu2_out_scale=hs)
    assert e4m3_equal(ref, quantize_fp8(F.relu(y_ref).square(), hs))


@pytest.mark.parametrize("N", [72, 2688, 10304])
def test_tilings_list_each_pick_at_its_fewest_rows(N):
    """Every size 1..max_m gets a tiling of the list, and each listed tiling is what its size
    gets, no smaller size getting it: the warm-up's sizes (linear.warm_sizes) compile all."""
    first = tilings(5000, N, sms=132, hopper=True)
    assert len(first) == len(set(first.values())) >= 4  # decode, skinny, prefill tilings
    for m in range(1, 5001):
        cfg = tiling(m, N, sms=132, hopper=True)
        assert first[cfg] <= m
    for cfg, m in first.items():
        assert tiling(m, N, sms=132, hopper=True) == cfg
