"""RMSNorm fused with the residual add, and the grouped gated RMSNorm of the Mamba-2 output.

Letters: T tokens, D hidden, C channels. All statistics are computed in fp32.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, D, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    h = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(res_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    # The residual stream is kept in the model dtype, so it is rounded before it is normalised.
    h = h.to(res_out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + row * D + cols, h, mask=mask)
    h = h.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + cols, (h * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_group_rmsnorm_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr, C, eps, GROUP: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * GROUP + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < GROUP
    y = tl.load(y_ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    g = y * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(g * g, axis=0) / GROUP + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + cols, (g * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _rmsnorm_launch(x, weight, eps, residual):
    """x[T,D], weight[D], residual[T,D] | None -> (out[T,D], residual_out[T,D])."""
    T, D = x.shape
    assert weight.shape == (D,)
    assert residual is None or residual.shape == (T, D)
    x = x.contiguous()
    res = x if residual is None else residual.contiguous()
    out = torch.empty_like(x)
    res_out = torch.empty_like(x)
    if T > 0:
        _rmsnorm_kernel[(T,)](
            x,
            res,
            weight.contiguous(),
            out,
            res_out,
            D,
            eps,
            HAS_RES=residual is not None,
            BLOCK=triton.next_power_of_2(D),
        )
    return out, res_out


def _gated_group_rmsnorm_launch(y, z, weight, group_size, eps):
    """y[T,C], z[T,C], weight[C] -> [T,C]."""
    T, C = y.shape
    assert z.shape == (T, C) and weight.shape == (C,) and C % group_size == 0
    y, z = y.contiguous(), z.contiguous()
    out = torch.empty_like(y)
    if T > 0:
        _gated_group_rmsnorm_kernel[(T, C // group_size)](
            y,
            z,
            weight.contiguous(),
            out,
            C,
            eps,
            GROUP=group_size,
            BLOCK=triton.next_power_of_2(group_size),
        )
    return out


def rmsnorm(x, weight, eps, residual=None):
    """x[T,D], weight[D], residual[T,D] | None -> (out[T,D], residual_out[T,D]).

    residual_out = x + residual (x when None), in x's dtype; out = RMSNorm(residual_out) * weight.
    """
    return _rmsnorm_launch(x, weight, eps, residual)


def rmsnorm_ref(x, weight, eps, residual=None):
    res_out = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    h = res_out.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * weight.float()).to(x.dtype), res_out


def gated_group_rmsnorm(y, z, weight, group_size, eps):
    """y[T,C], z[T,C], weight[C] -> [T,C]: g = y * silu(z), RMSNorm over each group of
    `group_size` channels, times weight (the gate comes before the norm)."""
    return _gated_group_rmsnorm_launch(y, z, weight, group_size, eps)


def gated_group_rmsnorm_ref(y, z, weight, group_size, eps):
    T, C = y.shape
    g = (y.float() * torch.nn.functional.silu(z.float())).view(T, C // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return (g.view(T, C) * weight.float()).to(y.dtype)
