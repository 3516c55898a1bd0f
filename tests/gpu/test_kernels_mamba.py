"""Mamba-2 and norm kernels against their torch references at the real shapes, on CUDA.

Run with `pytest -m gpu tests/gpu`. Skipped under TRITON_INTERPRET=1, which the root
conftest sets only on machines without CUDA.
"""

import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton interpreter on"),
]

H, P, G, N, K = 64, 64, 8, 128, 4
D_INNER, CONV_DIM = H * P, H * P + 2 * G * N  # in_proj's output: [z, xBC, dt], 10304 columns
MAX_REL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}


def assert_rel(name, outs, refs, dtype):
    """max |out - ref| over max |ref|, across all outputs, within the dtype's bound; no NaN."""
    assert all(torch.isfinite(o).all() for o in outs), f"{name}: non-finite output"
    num = max((o.float() - r.float()).abs().max().item() for o, r in zip(outs, refs, strict=True))
    den = max(r.float().abs().max().item() for r in refs)
    mean = sum((o.float() - r.float()).abs().mean().item() for o, r in zip(outs, refs, strict=True))
    assert num <= MAX_REL[dtype] * den, (
        f"{name}: max diff {num:.3e} (ref max {den:.3e}), mean {mean:.3e}"
    )


def ssm_inputs(T, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device="cuda", generator=g)).to(dtype)

    dt_bias = torch.log(
        torch.expm1(torch.empty(H, device="cuda").uniform_(1e-3, 1e-1, generator=g))
    )
    A = -torch.empty(H, device="cuda").uniform_(1, 16, generator=g)
    D = torch.randn(H, device="cuda", generator=g)
    return rnd(T, H, P), rnd(T, H, scale=0.5), A, rnd(T, G, N), rnd(T, G, N), D, dt_bias


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ssd_scan_varlen(dtype):
    from kernels.ssd_scan import ssd_scan, ssd_scan_ref

    lens = [1, 127, 128, 129, 1000, 2711]
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(device="cuda", dtype=torch.int32)
    x, dt, A, B, C, D, dt_bias = ssm_inputs(sum(lens), dtype)
    init = torch.randn(len(lens), H, P, N, device="cuda")
    args = (x, dt, A, B, C, D, dt_bias, cu, init, 128)
    assert_rel("ssd_scan", ssd_scan(*args), ssd_scan_ref(*args), dtype)


def test_ssd_scan_long_single_sequence():
    from kernels.ssd_scan import ssd_scan, ssd_scan_ref

    x, dt, A, B, C, D, dt_bias = ssm_inputs(16384, torch.bfloat16, seed=1)
    cu = torch.tensor([0, 16384], device="cuda", dtype=torch.int32)
    args = (x, dt, A, B, C, D, dt_bias, cu, None, 128)
    assert_rel("ssd_scan 16K", ssd_scan(*args), ssd_scan_ref(*args), torch.bfloat16)


@pytest.mark.parametrize("batch", [1, 256])
def test_ssm_state_update(batch):
    from kernels.ssm_state_update import ssm_state_update, ssm_state_update_ref

    x, dt, A, B, C, D, dt_bias = ssm_inputs(batch, torch.bfloat16)
    state = torch.randn(batch + 3, H, P, N, device="cuda")
    slots = torch.randperm(batch + 3, device="cuda")[:batch]
    s1, s2 = state.clone(), state.clone()
    y1 = ssm_state_update(s1, x, dt, A, B, C, D, dt_bias, slots)
    y2 = ssm_state_update_ref(s2, x, dt, A, B, C, D, dt_bias, slots)
    assert_rel("ssm_state_update y", [y1], [y2], torch.bfloat16)
    assert_rel("ssm_state_update state", [s1], [s2], torch.float32)


def test_causal_conv1d():
    from kernels.causal_conv1d import (
        causal_conv1d_update,
        causal_conv1d_update_ref,
        causal_conv1d_varlen,
        causal_conv1d_varlen_ref,
    )

    C = H * P + 2 * G * N
    lens = [1, 2, 3, 64, 65, 3000]
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(device="cuda", dtype=torch.int32)
    dt = torch.bfloat16
    x = torch.randn(sum(lens), C, device="cuda", dtype=dt)
    w, bias = torch.randn(C, K, device="cuda", dtype=dt), torch.randn(C, device="cuda", dtype=dt)
    state = torch.randn(8, C, K - 1, device="cuda", dtype=dt)
    slots = torch.tensor([7, 0, 3, 5, 1, 2], device="cuda")
    has_init = torch.tensor([True, False, True, True, False, True], device="cuda")
    s1, s2 = state.clone(), state.clone()
    y1 = causal_conv1d_varlen(x, w, bias, cu, s1, slots, has_init)
    y2 = causal_conv1d_varlen_ref(x, w, bias, cu, s2, slots, has_init)
    assert_rel("causal_conv1d_varlen", [y1, s1], [y2, s2], dt)
    xb = torch.randn(6, C, device="cuda", dtype=dt)
    y1 = causal_conv1d_update(xb, s1, w, bias, slots)
    y2 = causal_conv1d_update_ref(xb, s2, w, bias, slots)
    assert_rel("causal_conv1d_update", [y1, s1], [y2, s2], dt)


def in_proj_views(T, dtype, seed=0):
    """xBC[T,CONV_DIM] and dt[T,H]: column slices of one [T, in_proj_dim] tensor, as
    Mamba2Mixer splits in_proj's output."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    wide = torch.randn(T, D_INNER + CONV_DIM + H, device="cuda", generator=g).to(dtype)
    _, xbc, dt = wide.split([D_INNER, CONV_DIM, H], dim=-1)
    return xbc, dt


def conv_inputs(dtype):
    """Conv weight, bias and a conv state of 300 slots (a decode batch of 256 and spares)."""
    w = torch.randn(CONV_DIM, K, device="cuda", dtype=dtype)
    bias = torch.randn(CONV_DIM, device="cuda", dtype=dtype)
    state = torch.randn(300, CONV_DIM, K - 1, device="cuda", dtype=dtype)
    return w, bias, state


def ssm_views(xbc_out, T):
    """The conv output split and reshaped as in Mamba2Mixer: views with row stride CONV_DIM."""
    x, B, C = xbc_out.split([D_INNER, G * N, G * N], dim=-1)
    return x.reshape(T, H, P), B.reshape(T, G, N), C.reshape(T, G, N)


def test_prefill_on_in_proj_views():
    """The mixer's prefill path on in_proj's column slices: each op equals itself on contiguous
    copies exactly, and its reference within bounds."""
    from kernels.causal_conv1d import causal_conv1d_varlen, causal_conv1d_varlen_ref
    from kernels.ssd_scan import ssd_scan, ssd_scan_ref

    dtype = torch.bfloat16
    lens = [1, 127, 128, 129, 1000, 2711]
    T = sum(lens)
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(device="cuda", dtype=torch.int32)
    xbc, dt = in_proj_views(T, dtype)
    w, bias, state = conv_inputs(dtype)
    slots = torch.tensor([7, 0, 3, 5, 1, 2], device="cuda")
    has_init = torch.tensor([True, False, True, True, False, True], device="cuda")
    s1, s2, s3 = state.clone(), state.clone(), state.clone()
    y = causal_conv1d_varlen(xbc, w, bias, cu, s1, slots, has_init)
    y_copy = causal_conv1d_varlen(xbc.contiguous(), w, bias, cu, s2, slots, has_init)
    y_ref = causal_conv1d_varlen_ref(xbc, w, bias, cu, s3, slots, has_init)
    assert torch.equal(y, y_copy) and torch.equal(s1, s2), "conv: strided != contiguous"
    assert_rel("causal_conv1d_varlen on views", [y, s1], [y_ref, s3], dtype)

    x, B, C = ssm_views(y, T)
    _, _, A, _, _, D, dt_bias = ssm_inputs(1, dtype)
    init = torch.randn(len(lens), H, P, N, device="cuda")
    out = ssd_scan(x, dt, A, B, C, D, dt_bias, cu, init, 128)
    x_c, dt_c, B_c, C_c = (t.contiguous() for t in (x, dt, B, C))
    out_copy = ssd_scan(x_c, dt_c, A, B_c, C_c, D, dt_bias, cu, init, 128)
    assert all(map(torch.equal, out, out_copy)), "ssd_scan: strided != contiguous"
    ref = ssd_scan_ref(x, dt, A, B, C, D, dt_bias, cu, init, 128)
    assert_rel("ssd_scan on views", out, ref, dtype)


@pytest.mark.parametrize("batch", [1, 256])
def test_decode_on_in_proj_views(batch):
    """The mixer's decode path on in_proj's column slices, as test_prefill_on_in_proj_views."""
    from kernels.causal_conv1d import causal_conv1d_update, causal_conv1d_update_ref
    from kernels.ssm_state_update import ssm_state_update, ssm_state_update_ref

    dtype = torch.bfloat16
    xbc, dt = in_proj_views(batch, dtype, seed=1)
    w, bias, conv_state = conv_inputs(dtype)
    slots = torch.randperm(batch + 3, device="cuda")[:batch]
    c1, c2, c3 = conv_state.clone(), conv_state.clone(), conv_state.clone()
    y = causal_conv1d_update(xbc, c1, w, bias, slots)
    y_copy = causal_conv1d_update(xbc.contiguous(), c2, w, bias, slots)
    y_ref = causal_conv1d_update_ref(xbc, c3, w, bias, slots)
    assert torch.equal(y, y_copy) and torch.equal(c1, c2), "conv: strided != contiguous"
    assert_rel("causal_conv1d_update on views", [y, c1], [y_ref, c3], dtype)

    x, B, C = ssm_views(y, batch)
    _, _, A, _, _, D, dt_bias = ssm_inputs(1, dtype)
    state = torch.randn(batch + 3, H, P, N, device="cuda")
    s1, s2, s3 = state.clone(), state.clone(), state.clone()
    out = ssm_state_update(s1, x, dt, A, B, C, D, dt_bias, slots)
    x_c, dt_c, B_c, C_c = (t.contiguous() for t in (x, dt, B, C))
    out_copy = ssm_state_update(s2, x_c, dt_c, A, B_c, C_c, D, dt_bias, slots)
    assert torch.equal(out, out_copy) and torch.equal(s1, s2), "ssm: strided != contiguous"
    ref = ssm_state_update_ref(s3, x, dt, A, B, C, D, dt_bias, slots)
    assert_rel("ssm_state_update on views y", [out], [ref], dtype)
    assert_rel("ssm_state_update on views state", [s1], [s3], torch.float32)


def test_norms():
    from kernels.rmsnorm import gated_group_rmsnorm, gated_group_rmsnorm_ref, rmsnorm, rmsnorm_ref

    dt = torch.bfloat16
    x, res = (torch.randn(777, 2688, device="cuda", dtype=dt) for _ in range(2))
    w = torch.randn(2688, device="cuda", dtype=dt)
    assert_rel("rmsnorm", rmsnorm(x, w, 1e-5, res), rmsnorm_ref(x, w, 1e-5, res), dt)
    y, z = (torch.randn(777, H * P, device="cuda", dtype=dt) for _ in range(2))
    wg = torch.randn(H * P, device="cuda", dtype=dt)
    out = gated_group_rmsnorm(y, z, wg, 512, 1e-5)
    assert_rel("gated_group_rmsnorm", [out], [gated_group_rmsnorm_ref(y, z, wg, 512, 1e-5)], dt)
