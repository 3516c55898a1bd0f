"""One decode step of the Mamba-2 SSM for a batch of cache slots, updating the state in place.

Letters: B sequences, S cache slots, H heads, P head dim, G groups, N state size.
Per head h (group g = h // (H // G)), with dt' = softplus(dt + dt_bias):
    state[slot, h] = exp(dt' * A[h]) * state[slot, h] + dt' * x[:, None] * B[g][None, :]
    y = state[slot, h] @ C[g] + D[h] * x
The op is bound by reading and writing the fp32 state once, so each program streams one
[BLOCK_P, N] tile of it.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

_BLOCK_P = 16


@triton.jit
def _ssm_state_update_kernel(
    state_ptr, x_ptr, stride_xb, dt_ptr, stride_dtb, A_ptr, B_ptr, stride_Bb, C_ptr, stride_Cb,
    D_ptr, dt_bias_ptr, slots_ptr, y_ptr, H: tl.constexpr, P: tl.constexpr, G: tl.constexpr,
    N: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // (H // G)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)
    slot = tl.load(slots_ptr + b).to(tl.int64)

    dt = tl.load(dt_ptr + b * stride_dtb + h).to(tl.float32)
    dt += tl.load(dt_bias_ptr + h).to(tl.float32)
    # softplus; for large arguments exp overflows and softplus(v) == v in fp32
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
    dA = tl.exp(dt * tl.load(A_ptr + h))
    x = tl.load(x_ptr + b * stride_xb + h * P + p).to(tl.float32)
    Bv = tl.load(B_ptr + b * stride_Bb + g * N + n).to(tl.float32)
    Cv = tl.load(C_ptr + b * stride_Cb + g * N + n).to(tl.float32)

    s_ptrs = state_ptr + ((slot * H + h) * P + p)[:, None] * N + n[None, :]
    s = tl.load(s_ptrs) * dA + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s)
    y = tl.sum(s * Cv[None, :], axis=1) + tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + (b * H + h) * P + p, y.to(y_ptr.dtype.element_ty))


def _ssm_state_update_launch(state, x, dt, A, B, C, D, dt_bias, slots):
    """state[S,H,P,N] fp32, x[B,H,P], dt[B,H], A[H], B[B,G,N], C[B,G,N], D[H], dt_bias[H],
    slots[B] int64 -> y[B,H,P] contiguous. x, dt, B and C may have any batch stride; the dims
    after it must be contiguous."""
    Bsz, H, P = x.shape
    G, N = B.shape[1:]
    assert state.shape[1:] == (H, P, N) and state.dtype == torch.float32
    assert state.is_contiguous(), "the state is updated in place"
    assert dt.shape == (Bsz, H) and A.shape == D.shape == dt_bias.shape == (H,)
    assert B.shape == C.shape == (Bsz, G, N) and slots.shape == (Bsz,) and H % G == 0
    assert P % _BLOCK_P == 0 and N & (N - 1) == 0, "P must be a multiple of 16, N a power of 2"
    assert x.stride()[1:] == (P, 1) and dt.stride(1) == 1
    assert B.stride()[1:] == C.stride()[1:] == (N, 1)
    y = torch.empty(Bsz, H, P, device=x.device, dtype=x.dtype)
    if Bsz > 0:
        _ssm_state_update_kernel[(Bsz, H, P // _BLOCK_P)](
            state, x, x.stride(0), dt, dt.stride(0), A.float().contiguous(), B, B.stride(0), C,
            C.stride(0), D.contiguous(), dt_bias.contiguous(), slots, y,
            H=H, P=P, G=G, N=N, BLOCK_P=_BLOCK_P,
        )  # fmt: skip
    return y


def ssm_state_update(state, x, dt, A, B, C, D, dt_bias, slots):
    """state[S,H,P,N] fp32 (updated in place at rows `slots`), x[B,H,P], dt[B,H], A[H] (negative),
    B[B,G,N], C[B,G,N], D[H], dt_bias[H], slots[B] int64 -> y[B,H,P] in x's dtype."""
    return _ssm_state_update_launch(state, x, dt, A, B, C, D, dt_bias, slots)


def ssm_state_update_ref(state, x, dt, A, B, C, D, dt_bias, slots):
    H, G = x.shape[1], B.shape[1]
    dt = F.softplus(dt.float() + dt_bias.float())  # [B, H]
    Bh = B.float().repeat_interleave(H // G, dim=1)  # [B, H, N]
    Ch = C.float().repeat_interleave(H // G, dim=1)
    xf = x.float()
    s = state[slots] * torch.exp(dt * A.float())[:, :, None, None]
    s = s + (dt[:, :, None] * xf)[..., None] * Bh[:, :, None, :]
    state[slots] = s
    y = torch.einsum("bhpn,bhn->bhp", s, Ch) + D.float()[:, None] * xf
    return y.to(x.dtype)
