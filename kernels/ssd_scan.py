"""Mamba-2 SSD chunked scan over packed variable-length sequences (prefill).

Letters: T packed tokens, B sequences, H heads, P head dim, G groups, N state size,
c chunks, L chunk size. Heads h share the B/C group g = h // (H // G).
The kernels follow steps 1, 3+2, 4 and 5 of kernels/ssd_minimal.ssd_chunked:
    _ssd_cumsum_kernel   dt' = softplus(dt + dt_bias); a_cs = cumsum(dt' * A) inside each chunk
    _ssd_state_kernel    each chunk's own state contribution (x dt' decayed to the chunk end) B
    _ssd_cb_kernel       C B^T inside each chunk, once per group rather than per head
    _ssd_pass_kernel     sequential over a sequence's chunks: the state entering each chunk
    _ssd_out_kernel      y = C (state entering) decay + causal (C B^T decay dt') x + D x
Chunks restart at every sequence start, so no chunk straddles two sequences (kernels/varlen.py
builds the chunk table on the device). Grids put heads fastest so that the heads of one group
read the same chunk of B and C while it is in L2.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.ssd_minimal import ssd_chunked
from kernels.varlen import block_table

_BLOCK_H = 16  # heads per program in the cumsum kernel
_BLOCK_S = 256  # state elements per program in the state-passing kernel


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    # Exact fp32 (no tf32) for fp32 inputs, so that path can be checked tightly; else bf16.
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["n_chunks"])
def _ssd_cumsum_kernel(
    dt_ptr, stride_dtt, A_ptr, dt_bias_ptr, chunk_start_ptr, chunk_len_ptr, dt_out_ptr, a_cs_ptr,
    n_chunks, H: tl.constexpr, L: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    t = tl.arange(0, L)
    start = tl.load(chunk_start_ptr + c).to(tl.int64)
    mask = (t < tl.load(chunk_len_ptr + c))[:, None] & (hs < H)[None, :]
    dt = tl.load(dt_ptr + (start + t)[:, None] * stride_dtt + hs[None, :], mask=mask, other=0.0)
    dt = dt.to(tl.float32) + tl.load(dt_bias_ptr + hs, mask=hs < H, other=0.0).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, torch's threshold
    dt = tl.where(mask, dt, 0.0)  # [L, BLOCK_H]; padding steps neither decay nor add
    a_cs = tl.cumsum(dt * tl.load(A_ptr + hs, mask=hs < H, other=0.0)[None, :], axis=0)
    out = (hs[None, :] * n_chunks + c).to(tl.int64) * L + t[:, None]  # layout [H, c, L]
    tl.store(dt_out_ptr + out, dt, mask=(hs < H)[None, :])
    tl.store(a_cs_ptr + out, a_cs, mask=(hs < H)[None, :])


@triton.jit(do_not_specialize=["n_chunks"])
def _ssd_state_kernel(
    x_ptr, stride_xt, B_ptr, stride_Bt, dt_ptr, a_cs_ptr, chunk_start_ptr, chunk_len_ptr,
    states_ptr, n_chunks, H: tl.constexpr, P: tl.constexpr, G: tl.constexpr, N: tl.constexpr,
    L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0) // tl.cdiv(P, BLOCK_P)
    p = (tl.program_id(0) % tl.cdiv(P, BLOCK_P)) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1)
    g = h // (H // G)
    n = tl.arange(0, BLOCK_N)
    start = tl.load(chunk_start_ptr + c).to(tl.int64)
    clen = tl.load(chunk_len_ptr + c)
    if clen == 0:
        return
    row = (h * n_chunks + c).to(tl.int64) * L
    a_end = tl.load(a_cs_ptr + row + clen - 1)
    # the chunk's first row in int64; inside the chunk k * stride < L * stride stays in int32
    x_chunk = x_ptr + start * stride_xt + h * P
    B_chunk = B_ptr + start * stride_Bt + g * N

    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, clen, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < clen
        w = tl.exp(a_end - tl.load(a_cs_ptr + row + k, mask=kmask, other=0.0))
        w *= tl.load(dt_ptr + row + k, mask=kmask, other=0.0)
        xT = tl.load(
            x_chunk + k[None, :] * stride_xt + p[:, None],
            mask=kmask[None, :] & (p < P)[:, None], other=0.0,
        ).to(tl.float32)  # fmt: skip
        Bk = tl.load(
            B_chunk + k[:, None] * stride_Bt + n[None, :],
            mask=kmask[:, None] & (n < N)[None, :], other=0.0,
        )  # fmt: skip
        acc = _dot(xT * w[None, :], Bk.to(tl.float32), acc, IEEE)
    out = ((c * H + h).to(tl.int64) * P + p)[:, None] * N + n[None, :]  # layout [c, H, P, N]
    tl.store(states_ptr + out, acc, mask=(p < P)[:, None] & (n < N)[None, :])


@triton.jit(do_not_specialize=["n_chunks"])
def _ssd_pass_kernel(
    states_ptr, a_cs_ptr, chunk_len_ptr, seq_chunks_ptr, init_ptr, entering_ptr, final_ptr,
    n_chunks, H: tl.constexpr, PN: tl.constexpr, L: tl.constexpr, HAS_INIT: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = offs < PN
    if HAS_INIT:
        s = tl.load(init_ptr + (b * H + h) * PN + offs, mask=mask, other=0.0)
    else:
        s = tl.zeros((BLOCK_S,), dtype=tl.float32)
    for c in range(tl.load(seq_chunks_ptr + b), tl.load(seq_chunks_ptr + b + 1)):
        at = (c * H + h).to(tl.int64) * PN + offs
        tl.store(entering_ptr + at, s.to(entering_ptr.dtype.element_ty), mask=mask)
        a_end = tl.load(
            a_cs_ptr + (h * n_chunks + c).to(tl.int64) * L + tl.load(chunk_len_ptr + c) - 1
        )
        s = tl.exp(a_end) * s + tl.load(states_ptr + at, mask=mask, other=0.0)
    tl.store(final_ptr + (b * H + h) * PN + offs, s, mask=mask)


@triton.jit
def _ssd_cb_kernel(
    B_ptr, stride_Bt, C_ptr, stride_Ct, chunk_start_ptr, chunk_len_ptr, cb_ptr, G: tl.constexpr,
    N: tl.constexpr, L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0)
    m0 = (tl.program_id(1) // tl.cdiv(L, BLOCK_K)) * BLOCK_M
    k0 = (tl.program_id(1) % tl.cdiv(L, BLOCK_K)) * BLOCK_K
    c = tl.program_id(2)
    start = tl.load(chunk_start_ptr + c).to(tl.int64)
    clen = tl.load(chunk_len_ptr + c)
    if k0 >= m0 + BLOCK_M or m0 >= clen:  # above the diagonal or past the chunk: never read
        return
    m = m0 + tl.arange(0, BLOCK_M)
    k = k0 + tl.arange(0, BLOCK_K)
    n = tl.arange(0, BLOCK_N)
    Cm = tl.load(
        C_ptr + (start + m)[:, None] * stride_Ct + g * N + n[None, :],
        mask=(m < clen)[:, None] & (n < N)[None, :], other=0.0,
    ).to(tl.float32)  # fmt: skip
    BkT = tl.load(
        B_ptr + (start + k)[None, :] * stride_Bt + g * N + n[:, None],
        mask=(k < clen)[None, :] & (n < N)[:, None], other=0.0,
    ).to(tl.float32)  # fmt: skip
    cb = _dot(Cm, BkT, tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32), IEEE)
    out = ((c * G + g).to(tl.int64) * L + m)[:, None] * L + k[None, :]  # layout [c, G, L, L]
    tl.store(cb_ptr + out, cb.to(cb_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["n_chunks"])
def _ssd_out_kernel(
    x_ptr, stride_xt, cb_ptr, C_ptr, stride_Ct, D_ptr, dt_ptr, a_cs_ptr, entering_ptr,
    chunk_start_ptr, chunk_len_ptr, y_ptr, n_chunks, H: tl.constexpr, P: tl.constexpr,
    G: tl.constexpr, N: tl.constexpr, L: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0) // tl.cdiv(P, BLOCK_P)
    p = (tl.program_id(0) % tl.cdiv(P, BLOCK_P)) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) // tl.cdiv(L, BLOCK_M)
    m0 = (tl.program_id(1) % tl.cdiv(L, BLOCK_M)) * BLOCK_M
    g = h // (H // G)
    n = tl.arange(0, BLOCK_N)
    start = tl.load(chunk_start_ptr + c).to(tl.int64)
    clen = tl.load(chunk_len_ptr + c)
    if m0 >= clen:
        return
    row = (h * n_chunks + c).to(tl.int64) * L
    m = m0 + tl.arange(0, BLOCK_M)
    mmask = m < clen
    pmask = p < P
    a_m = tl.load(a_cs_ptr + row + m, mask=mmask, other=0.0)
    Cm = tl.load(
        C_ptr + (start + m)[:, None] * stride_Ct + g * N + n[None, :],
        mask=mmask[:, None] & (n < N)[None, :], other=0.0,
    ).to(tl.float32)  # fmt: skip

    # 5. the state entering the chunk, read at each row and decayed to it
    sT = tl.load(
        entering_ptr + ((c * H + h).to(tl.int64) * P + p)[None, :] * N + n[:, None],
        mask=pmask[None, :] & (n < N)[:, None], other=0.0,
    ).to(tl.float32)  # fmt: skip
    acc = _dot(Cm, sT, tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32), IEEE)
    acc *= tl.exp(a_m)[:, None]

    # 2. the causal part inside the chunk
    for k0 in range(0, tl.minimum(m0 + BLOCK_M, clen), BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < clen
        cb = tl.load(
            cb_ptr + ((c * G + g).to(tl.int64) * L + m)[:, None] * L + k[None, :],
            mask=mmask[:, None] & kmask[None, :], other=0.0,
        ).to(tl.float32)  # fmt: skip
        a_k = tl.load(a_cs_ptr + row + k, mask=kmask, other=0.0)
        dt_k = tl.load(dt_ptr + row + k, mask=kmask, other=0.0)
        # mask before exp: above the diagonal the exponent is positive and could overflow
        causal = m[:, None] >= k[None, :]
        cb *= tl.exp(tl.where(causal, a_m[:, None] - a_k[None, :], -float("inf"))) * dt_k[None, :]
        xk = tl.load(
            x_ptr + (start + k)[:, None] * stride_xt + h * P + p[None, :],
            mask=kmask[:, None] & pmask[None, :], other=0.0,
        ).to(tl.float32)  # fmt: skip
        acc = _dot(cb, xk, acc, IEEE)

    omask = mmask[:, None] & pmask[None, :]
    x_ptrs = x_ptr + (start + m)[:, None] * stride_xt + h * P + p[None, :]
    xm = tl.load(x_ptrs, mask=omask, other=0.0).to(tl.float32)
    acc += tl.load(D_ptr + h).to(tl.float32) * xm
    y_ptrs = y_ptr + ((start + m) * H + h)[:, None] * P + p[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=omask)


def _ssd_scan_launch(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states, chunk_size):
    """x[T,H,P], dt[T,H], A[H] fp32, B[T,G,N], C[T,G,N], D[H], dt_bias[H], cu_seqlens[B+1] int32,
    initial_states[B,H,P,N] fp32 | None -> (y[T,H,P] contiguous, final_states[B,H,P,N] fp32).
    x, dt, B and C may have any token stride (column slices of a wider tensor); the dims after
    the token dim must be contiguous."""
    T, H, P = x.shape
    G, N = B.shape[1:]
    nseq = cu_seqlens.shape[0] - 1
    L = chunk_size
    assert dt.shape == (T, H) and A.shape == D.shape == dt_bias.shape == (H,)
    assert B.shape == C.shape == (T, G, N) and H % G == 0
    assert initial_states is None or initial_states.shape == (nseq, H, P, N)
    assert L >= 16 and L & (L - 1) == 0, "chunk_size must be a power of two >= 16"
    assert x.stride()[1:] == (P, 1) and dt.stride(1) == 1
    assert B.stride()[1:] == C.stride()[1:] == (N, 1)
    A, D, dt_bias = A.float().contiguous(), D.contiguous(), dt_bias.contiguous()
    dev = x.device
    _, chunk_start, chunk_len, seq_chunks = block_table(cu_seqlens, T, L)
    nc = chunk_start.shape[0]  # an upper bound: unused chunks have length 0
    # fp32 inputs stay exact; so does the CPU interpreter, which cannot run bf16 dots
    ieee = x.dtype == torch.float32 or not x.is_cuda
    BLOCK_P = max(16, min(64, triton.next_power_of_2(P)))
    BLOCK_N = max(16, triton.next_power_of_2(N))
    # tiles, warps and stages below: the fastest measured on the H200 at L = 16K and 64K
    BLOCK_M, BLOCK_K = min(64, L), min(32, L)

    y = torch.empty(T, H, P, device=dev, dtype=x.dtype)
    final = torch.empty(nseq, H, P, N, device=dev, dtype=torch.float32)
    dt_sp = torch.empty(H, nc, L, device=dev, dtype=torch.float32)
    a_cs = torch.empty_like(dt_sp)
    states = torch.empty(nc, H, P, N, device=dev, dtype=torch.float32)
    # C B^T and the entering states only feed dot operands, rounded to bf16 anyway on the GPU
    cb = torch.empty(nc, G, L, L, device=dev, dtype=torch.float32 if ieee else torch.bfloat16)
    entering = torch.empty(nc, H, P, N, device=dev, dtype=x.dtype)
    if nc > 0:
        _ssd_cumsum_kernel[(nc, triton.cdiv(H, _BLOCK_H))](
            dt, dt.stride(0), A, dt_bias, chunk_start, chunk_len, dt_sp, a_cs, nc, H=H, L=L,
            BLOCK_H=_BLOCK_H,
        )  # fmt: skip
        _ssd_state_kernel[(H * triton.cdiv(P, BLOCK_P), nc)](
            x, x.stride(0), B, B.stride(0), dt_sp, a_cs, chunk_start, chunk_len, states, nc,
            H=H, P=P, G=G, N=N, L=L, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, IEEE=ieee,
            num_stages=3,
        )  # fmt: skip
        _ssd_cb_kernel[(G, triton.cdiv(L, BLOCK_M) ** 2, nc)](
            B, B.stride(0), C, C.stride(0), chunk_start, chunk_len, cb, G=G, N=N, L=L,
            BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_M, BLOCK_N=BLOCK_N, IEEE=ieee, num_warps=8,
        )  # fmt: skip
    if nseq > 0:
        init = initial_states.float().contiguous() if initial_states is not None else final
        _ssd_pass_kernel[(nseq, H, triton.cdiv(P * N, _BLOCK_S))](
            states, a_cs, chunk_len, seq_chunks, init, entering, final, nc, H=H, PN=P * N, L=L,
            HAS_INIT=initial_states is not None, BLOCK_S=_BLOCK_S,
        )  # fmt: skip
    if nc > 0:
        _ssd_out_kernel[(H * triton.cdiv(P, BLOCK_P), nc * triton.cdiv(L, BLOCK_M))](
            x, x.stride(0), cb, C, C.stride(0), D, dt_sp, a_cs, entering, chunk_start, chunk_len,
            y, nc, H=H, P=P, G=G, N=N, L=L, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_P=BLOCK_P,
            BLOCK_N=BLOCK_N, IEEE=ieee, num_stages=2,
        )  # fmt: skip
    return y, final


def ssd_scan(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states=None, chunk_size=128):
    """x[T,H,P], dt[T,H], A[H] fp32 (negative), B[T,G,N], C[T,G,N], D[H], dt_bias[H],
    cu_seqlens[B+1] int32, initial_states[B,H,P,N] fp32 | None
    -> (y[T,H,P] in x's dtype, final_states[B,H,P,N] fp32).

    dt' = softplus(dt + dt_bias) in fp32; per sequence, from its initial state (zeros if None):
    state_t = exp(dt'_t A) state_{t-1} + dt'_t x_t B_t^T,  y_t = state_t C_t + D x_t.
    """
    return _ssd_scan_launch(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states, chunk_size)


def ssd_scan_ref(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states=None, chunk_size=128):
    T, H, P = x.shape
    G, N = B.shape[1:]
    bounds = cu_seqlens.tolist()
    y = torch.empty_like(x)
    final = x.new_zeros(len(bounds) - 1, H, P, N, dtype=torch.float32)
    for i in range(len(bounds) - 1):
        s, e = bounds[i], bounds[i + 1]
        init = None if initial_states is None else initial_states[i : i + 1].float()
        if s == e:
            final[i] = 0.0 if init is None else init[0]
            continue
        xs = x[s:e].float()[None]
        dts = F.softplus(dt[s:e].float() + dt_bias.float())[None]
        Bs = B[s:e].float().repeat_interleave(H // G, dim=1)[None]
        Cs = C[s:e].float().repeat_interleave(H // G, dim=1)[None]
        ys, fin = ssd_chunked(xs, dts, A.float(), Bs, Cs, chunk_size, init)
        final[i] = fin[0]
        y[s:e] = (ys[0] + D.float()[:, None] * xs[0]).to(x.dtype)
    return y, final
