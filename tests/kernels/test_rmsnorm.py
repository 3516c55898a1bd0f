"""Fused residual RMSNorm and grouped gated RMSNorm: Triton (interpreted) vs torch reference."""

import pytest
import torch

from kernels.fp8_linear import fp8_quantize, fp8_quantize_ref
from kernels.quant_formats import fp8_scale
from kernels.rmsnorm import gated_group_rmsnorm, gated_group_rmsnorm_ref, rmsnorm, rmsnorm_ref
from tests.kernels.mamba_helpers import assert_close, column_slices
from tests.kernels.quant_helpers import e4m3_equal

EPS = 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("T, D", [(1, 48), (5, 100)])
def test_rmsnorm_equals_ref(T, D, with_residual, dtype):
    g = torch.Generator().manual_seed(T * D)
    x = torch.randn(T, D, generator=g).to(dtype)
    res = torch.randn(T, D, generator=g).to(dtype) if with_residual else None
    w = torch.randn(D, generator=g).to(dtype)
    out, res_out = rmsnorm(x, w, EPS, res)
    out_ref, res_out_ref = rmsnorm_ref(x, w, EPS, res)
    assert out.dtype == res_out.dtype == dtype
    assert_close("out", out, out_ref, dtype)
    assert_close("residual_out", res_out, res_out_ref, dtype)


def test_rmsnorm_ref_matches_definition():
    g = torch.Generator().manual_seed(0)
    x, res = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    w = torch.randn(16, generator=g)
    h = x + res
    expected = h / torch.sqrt((h * h).mean(-1, keepdim=True) + EPS) * w
    assert_close("out", rmsnorm_ref(x, w, EPS, res)[0], expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T, C, group", [(1, 32, 8), (7, 48, 12), (3, 24, 24)])
def test_gated_group_rmsnorm_equals_ref(T, C, group, dtype):
    g = torch.Generator().manual_seed(T * C)
    y, z = (torch.randn(T, C, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(C, generator=g).to(dtype)
    out = gated_group_rmsnorm(y, z, w, group, EPS)
    assert out.dtype == dtype
    assert_close("out", out, gated_group_rmsnorm_ref(y, z, w, group, EPS), dtype)


def test_gated_norm_is_per_group_and_gate_first():
    """Scaling one group's input leaves the other groups' output unchanged (per-group norm), and
    the gate multiplies before the norm (a constant gate cancels out)."""
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2, 16, generator=g)
    w = torch.randn(16, generator=g)
    z = torch.full((2, 16), 30.0)  # silu(30) == 30 to fp32 precision: a constant gate
    base = gated_group_rmsnorm(y, z, w, 8, EPS)
    scaled = y.clone()
    scaled[:, :8] *= 5
    out = gated_group_rmsnorm(scaled, z, w, 8, EPS)
    assert_close("other group", out[:, 8:], base[:, 8:], torch.float32)
    assert_close("scaled group", out[:, :8], base[:, :8], torch.float32)
    plain = y.view(2, 2, 8)
    plain = plain / torch.sqrt((plain * plain).mean(-1, keepdim=True) + EPS)
    assert_close("constant gate cancels", base, plain.view(2, 16) * w, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("T, D", [(1, 48), (5, 100)])
def test_rmsnorm_e4m3_out_is_the_quantized_output(T, D, with_residual, dtype):
    """out_scale (not a power of two, clipping the largest outputs): fp8_quantize of the
    unfused output bit for bit, residual_out unchanged; the reference likewise."""
    g = torch.Generator().manual_seed(T * D + 1)
    x = torch.randn(T, D, generator=g).to(dtype)
    res = torch.randn(T, D, generator=g).to(dtype) if with_residual else None
    w = torch.randn(D, generator=g).to(dtype)
    out, res_out = rmsnorm(x, w, EPS, res)
    scale = fp8_scale(out) * 0.7
    q, q_res_out = rmsnorm(x, w, EPS, res, out_scale=scale)
    assert e4m3_equal(q, fp8_quantize(out, scale))
    assert torch.equal(q_res_out, res_out)
    out_ref, res_out_ref = rmsnorm_ref(x, w, EPS, res)
    q_ref, _ = rmsnorm_ref(x, w, EPS, res, out_scale=scale)
    assert e4m3_equal(q_ref, fp8_quantize_ref(out_ref, scale))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T, C, group", [(1, 32, 8), (7, 48, 12), (3, 24, 24)])
def test_gated_group_rmsnorm_reads_strided_rows(T, C, group, dtype):
    """z as the model hands it over (a column slice of in_proj's output), y too: the kernel
    gives the same output as from contiguous copies, the reference agrees."""
    g = torch.Generator().manual_seed(T * C + 2)
    _, ys, _, zs, _ = column_slices(T, [3, C, 5, C, 2], dtype, g)
    w = torch.randn(C, generator=g).to(dtype)
    assert zs.stride(0) != C and zs.stride(1) == 1
    out = gated_group_rmsnorm(ys, zs, w, group, EPS)
    assert torch.equal(out, gated_group_rmsnorm(ys.contiguous(), zs.contiguous(), w, group, EPS))
    assert_close("strided", out, gated_group_rmsnorm_ref(ys, zs, w, group, EPS), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T, C, group", [(1, 32, 8), (7, 48, 12), (3, 24, 24)])
def test_gated_group_rmsnorm_e4m3_out_is_the_quantized_output(T, C, group, dtype):
    """out_scale, z strided: fp8_quantize of the unfused output bit for bit; the reference
    likewise."""
    g = torch.Generator().manual_seed(T * C + 3)
    y = torch.randn(T, C, generator=g).to(dtype)
    _, z, _ = column_slices(T, [3, C, 5], dtype, g)
    w = torch.randn(C, generator=g).to(dtype)
    out = gated_group_rmsnorm(y, z, w, group, EPS)
    scale = fp8_scale(out) * 0.7
    assert e4m3_equal(gated_group_rmsnorm(y, z, w, group, EPS, scale), fp8_quantize(out, scale))
    q_ref = gated_group_rmsnorm_ref(y, z, w, group, EPS, scale)
    assert e4m3_equal(q_ref, fp8_quantize_ref(gated_group_rmsnorm_ref(y, z, w, group, EPS), scale))
