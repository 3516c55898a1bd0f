"""Depthwise causal conv1d with bias and SiLU: varlen prefill and the one-token decode update.

Letters: T packed tokens, B sequences, S cache slots, C channels, K conv width.
The conv state of a slot holds the last K-1 inputs, oldest first: conv_state[S, C, K-1].
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.varlen import block_table

_BLOCK_T = 16
_BLOCK_C = 128


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["n_seqs"])
def _causal_conv1d_varlen_kernel(
    x_ptr, stride_xt, w_ptr, bias_ptr, cu_ptr, blk_seq_ptr, blk_start_ptr, n_seqs, state_ptr,
    slots_ptr, has_init_ptr, y_ptr, C, K: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    b = tl.load(blk_seq_ptr + tl.program_id(0))
    if b >= n_seqs:  # an unused slot of the block table
        return
    t0 = tl.load(blk_start_ptr + tl.program_id(0))
    seq_start = tl.load(cu_ptr + b)
    seq_end = tl.load(cu_ptr + b + 1)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    has_init = tl.load(has_init_ptr + b) != 0
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = t0 + tl.arange(0, BLOCK_T)
    rmask = rows < seq_end
    state_row = state_ptr + slot * C * (K - 1) + cols * (K - 1)

    acc = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        src = rows - (K - 1) + k
        in_seq = (src >= seq_start)[:, None] & rmask[:, None] & cmask[None, :]
        v = tl.load(
            x_ptr + src.to(tl.int64)[:, None] * stride_xt + cols[None, :], mask=in_seq, other=0.0
        )
        # Taps reaching before the sequence start read the slot's previous inputs.
        from_state = (src < seq_start)[:, None] & rmask[:, None] & cmask[None, :] & has_init
        s_idx = (K - 1) + src - seq_start
        s = tl.load(state_row[None, :] + s_idx[:, None], mask=from_state, other=0.0)
        w = tl.load(w_ptr + cols * K + k, mask=cmask, other=0.0).to(tl.float32)
        acc += (v.to(tl.float32) + s.to(tl.float32)) * w[None, :]
    y = acc * tl.sigmoid(acc)
    out_mask = rmask[:, None] & cmask[None, :]
    tl.store(
        y_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :],
        y.to(y_ptr.dtype.element_ty),
        out_mask,
    )

    # Only a sequence's first block reads the old state (BLOCK_T >= K-1), so it alone rewrites it.
    if t0 == seq_start:
        seq_len = seq_end - seq_start
        for j in tl.static_range(K - 1):
            rel = seq_len - (K - 1) + j
            x_row = x_ptr + (seq_start + rel).to(tl.int64) * stride_xt
            xv = tl.load(x_row + cols, mask=cmask & (rel >= 0))
            sv = tl.load(state_row + seq_len + j, mask=cmask & (rel < 0) & has_init, other=0.0)
            new = tl.where(rel >= 0, xv.to(tl.float32), sv.to(tl.float32))
            tl.store(state_row + j, new.to(state_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, stride_xb, state_ptr, w_ptr, bias_ptr, slots_ptr, y_ptr, C, K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    slot = tl.load(slots_ptr + b).to(tl.int64)
    state_row = state_ptr + slot * C * (K - 1) + cols * (K - 1)
    x = tl.load(x_ptr + b * stride_xb + cols, mask=cmask, other=0.0)
    acc = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    for k in tl.static_range(K - 1):
        s = tl.load(state_row + k, mask=cmask, other=0.0)
        acc += s.to(tl.float32) * tl.load(w_ptr + cols * K + k, mask=cmask).to(tl.float32)
        if k > 0:
            tl.store(state_row + k - 1, s, mask=cmask)
    acc += x.to(tl.float32) * tl.load(w_ptr + cols * K + K - 1, mask=cmask).to(tl.float32)
    tl.store(state_row + K - 2, x.to(state_ptr.dtype.element_ty), mask=cmask)
    tl.store(y_ptr + b * C + cols, (acc * tl.sigmoid(acc)).to(y_ptr.dtype.element_ty), mask=cmask)


def _causal_conv1d_varlen_launch(x, weight, bias, cu_seqlens, conv_state, slots, has_initial_state):
    """x[T,C] (rows may be strided), weight[C,K], bias[C], cu_seqlens[B+1] int32,
    conv_state[S,C,K-1], slots[B] int64, has_initial_state[B] bool -> y[T,C] contiguous."""
    T, C = x.shape
    K = weight.shape[1]
    B = cu_seqlens.shape[0] - 1
    assert weight.shape == (C, K) and bias.shape == (C,) and K - 1 <= _BLOCK_T
    assert conv_state.shape[1:] == (C, K - 1) and conv_state.is_contiguous()
    assert slots.shape == (B,) and has_initial_state.shape == (B,)
    assert x.stride(1) == 1, "channels must be contiguous"
    y = torch.empty(T, C, device=x.device, dtype=x.dtype)
    if B == 0:
        return y
    # an empty sequence still gets a block: it must rewrite its conv state
    blk_seq, blk_start, _, _ = block_table(cu_seqlens, T, _BLOCK_T, min_one=True)
    grid = (blk_seq.shape[0], triton.cdiv(C, _BLOCK_C))
    _causal_conv1d_varlen_kernel[grid](
        x, x.stride(0), weight.contiguous(), bias.contiguous(), cu_seqlens, blk_seq, blk_start, B,
        conv_state, slots, has_initial_state.to(torch.int32), y, C,
        K=K, BLOCK_T=_BLOCK_T, BLOCK_C=_BLOCK_C,
    )  # fmt: skip
    return y


def _causal_conv1d_update_launch(x, conv_state, weight, bias, slots):
    """x[B,C] (rows may be strided), conv_state[S,C,K-1], weight[C,K], bias[C], slots[B] int64
    -> y[B,C] contiguous."""
    B, C = x.shape
    K = weight.shape[1]
    assert weight.shape == (C, K) and bias.shape == (C,) and slots.shape == (B,)
    assert conv_state.shape[1:] == (C, K - 1) and conv_state.is_contiguous()
    assert x.stride(1) == 1, "channels must be contiguous"
    y = torch.empty(B, C, device=x.device, dtype=x.dtype)
    if B > 0:
        grid = (B, triton.cdiv(C, _BLOCK_C))
        _causal_conv1d_update_kernel[grid](
            x, x.stride(0), conv_state, weight.contiguous(), bias.contiguous(), slots, y, C,
            K=K, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
    return y


def causal_conv1d_varlen(x, weight, bias, cu_seqlens, conv_state, slots, has_initial_state):
    """x[T,C], weight[C,K], bias[C], cu_seqlens[B+1] int32, conv_state[S,C,K-1] (in/out),
    slots[B] int64, has_initial_state[B] bool -> y[T,C] = silu(conv(x) + bias).

    A sequence without an initial state starts from zeros. Afterwards conv_state[slots[b]] holds
    the last K-1 inputs of sequence b (older state entries first when the sequence is short).
    """
    return _causal_conv1d_varlen_launch(
        x, weight, bias, cu_seqlens, conv_state, slots, has_initial_state
    )


def causal_conv1d_varlen_ref(x, weight, bias, cu_seqlens, conv_state, slots, has_initial_state):
    C, K = weight.shape
    y = torch.empty_like(x)
    bounds = cu_seqlens.tolist()
    for b, slot in enumerate(slots.tolist()):
        xs = x[bounds[b] : bounds[b + 1]].t().float()  # [C, len]
        prev = conv_state[slot].float() if bool(has_initial_state[b]) else xs.new_zeros(C, K - 1)
        full = torch.cat([prev, xs], dim=1)
        if xs.shape[1] > 0:
            out = F.conv1d(full[None], weight.float()[:, None], bias.float(), groups=C)
            y[bounds[b] : bounds[b + 1]] = F.silu(out[0]).t().to(x.dtype)
        conv_state[slot] = full[:, full.shape[1] - (K - 1) :].to(conv_state.dtype)
    return y


def causal_conv1d_update(x, conv_state, weight, bias, slots):
    """x[B,C], conv_state[S,C,K-1] (in/out), weight[C,K], bias[C], slots[B] int64 -> y[B,C].

    One new token per sequence: y = silu(conv over [state, x] + bias); the state shifts by one.
    """
    return _causal_conv1d_update_launch(x, conv_state, weight, bias, slots)


def causal_conv1d_update_ref(x, conv_state, weight, bias, slots):
    full = torch.cat([conv_state[slots].float(), x.float()[:, :, None]], dim=2)  # [B, C, K]
    conv_state[slots] = full[:, :, 1:].to(conv_state.dtype)
    y = (full * weight.float()).sum(-1) + bias.float()
    return F.silu(y).to(x.dtype)
