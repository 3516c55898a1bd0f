"""RMSNorm fused with the residual add, and the grouped gated RMSNorm of the Mamba-2 output.

Letters: T tokens, D hidden, C channels. All statistics are computed in fp32.

With `out_scale` (the static input_scale of the FP8 linear the output feeds) the normed output
is rounded to the input's dtype and then quantized to E4M3 as kernels/fp8_linear.py does:
`fp8_quantize` of the unfused output, without its separate pass over it. Compiled, the fused
RMSNorm may sum a row's squares in another order (its E4M3 store gives it a layout of 16
values a thread, the plain kernel's 8): where rstd's last bit moves, a code moves by one step
(the H100 test of session 15 bounds how often); the gated norm and the interpreter match bit
for bit.
"""

import torch
import triton
import triton.language as tl

from kernels.fp8_linear import fp8_quantize_ref, quantize_e4m3
from kernels.interpreter import interpreting


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, scale_ptr, D, eps,
    HAS_RES: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
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
    out = h * rstd * w
    if scale_ptr is not None:  # None is compile-time: plain output
        # Rounded as the unfused output is stored, so fp8_quantize of it gives the same codes.
        out = out.to(res_out_ptr.dtype.element_ty)
        out = quantize_e4m3(out, tl.math.div_rn(1.0, tl.load(scale_ptr)), INTERPRET)
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_group_rmsnorm_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr, scale_ptr, C, stride_y, stride_z, eps,
    INTERPRET: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * GROUP + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < GROUP
    y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
    g = y * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(g * g, axis=0) / GROUP + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out = g * rstd * w
    if scale_ptr is not None:  # None is compile-time: plain output
        # Rounded as the unfused output is stored, so fp8_quantize of it gives the same codes.
        out = out.to(y_ptr.dtype.element_ty)
        out = quantize_e4m3(out, tl.math.div_rn(1.0, tl.load(scale_ptr)), INTERPRET)
    tl.store(out_ptr + row * C + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _out_like(x, out_scale):
    """The normed output's buffer: E4M3 with out_scale (fp32 0-d), else x's dtype."""
    assert out_scale is None or (out_scale.numel() == 1 and out_scale.dtype == torch.float32)
    return torch.empty_like(x, dtype=x.dtype if out_scale is None else torch.float8_e4m3fn)


def _rmsnorm_launch(x, weight, eps, residual, out_scale):
    """x[T,D], weight[D], residual[T,D] | None -> (out[T,D], residual_out[T,D])."""
    T, D = x.shape
    assert weight.shape == (D,)
    assert residual is None or residual.shape == (T, D)
    x = x.contiguous()
    res = x if residual is None else residual.contiguous()
    out = _out_like(x, out_scale)
    res_out = torch.empty_like(x)
    if T > 0:
        _rmsnorm_kernel[(T,)](
            x,
            res,
            weight.contiguous(),
            out,
            res_out,
            out_scale,
            D,
            eps,
            HAS_RES=residual is not None,
            INTERPRET=interpreting(),
            BLOCK=triton.next_power_of_2(D),
        )
    return out, res_out


def _gated_group_rmsnorm_launch(y, z, weight, group_size, eps, out_scale):
    """y[T,C], z[T,C] (rows strided, e.g. z a column slice of in_proj's output), weight[C]
    -> [T,C]."""
    T, C = y.shape
    assert z.shape == (T, C) and weight.shape == (C,) and C % group_size == 0
    y = y if y.stride(1) == 1 else y.contiguous()
    z = z if z.stride(1) == 1 else z.contiguous()
    out = _out_like(y, out_scale)
    if T > 0:
        _gated_group_rmsnorm_kernel[(T, C // group_size)](
            y,
            z,
            weight.contiguous(),
            out,
            out_scale,
            C,
            y.stride(0),
            z.stride(0),
            eps,
            INTERPRET=interpreting(),
            GROUP=group_size,
            BLOCK=triton.next_power_of_2(group_size),
        )
    return out


def rmsnorm(x, weight, eps, residual=None, out_scale=None):
    """x[T,D], weight[D], residual[T,D] | None, out_scale fp32 0-d | None
    -> (out[T,D], residual_out[T,D]).

    residual_out = x + residual (x when None), in x's dtype; out = RMSNorm(residual_out) * weight
    in x's dtype, or with out_scale that value quantized to E4M3 by it (float8_e4m3fn).
    """
    return _rmsnorm_launch(x, weight, eps, residual, out_scale)


def rmsnorm_ref(x, weight, eps, residual=None, out_scale=None):
    res_out = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    h = res_out.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = (h * weight.float()).to(x.dtype)
    return (out if out_scale is None else fp8_quantize_ref(out, out_scale)), res_out


def gated_group_rmsnorm(y, z, weight, group_size, eps, out_scale=None):
    """y[T,C], z[T,C], weight[C], out_scale fp32 0-d | None -> [T,C]: g = y * silu(z), RMSNorm
    over each group of `group_size` channels, times weight (the gate comes before the norm); in
    y's dtype, or with out_scale quantized to E4M3 by it. y and z may have any row stride."""
    return _gated_group_rmsnorm_launch(y, z, weight, group_size, eps, out_scale)


def gated_group_rmsnorm_ref(y, z, weight, group_size, eps, out_scale=None):
    T, C = y.shape
    g = (y.float() * torch.nn.functional.silu(z.float())).view(T, C // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    out = (g.view(T, C) * weight.float()).to(y.dtype)
    return out if out_scale is None else fp8_quantize_ref(out, out_scale)
