"""MoE router: fp32 logits, sigmoid scores, biased top-k selection, renormalised weights.

Letters: T tokens, D hidden, E experts, k experts per token.

The correction bias only decides *which* experts are chosen; the combine weights are the
unbiased sigmoid scores of the chosen experts, divided by their sum (+1e-20) and scaled.
Prefill batches: one program routes BLOCK_T tokens, the whole [BLOCK_T, E] logit tile in
registers, so selection needs no second pass over memory. Decode batches (up to PARTS_MAX_T
tokens): programs of 16 tokens x a slice of the hidden size write partial logits, a second
kernel sums them in a fixed order and selects.

The model keeps the gate weight in fp32 and its hidden states in bf16. An fp32 dot would run
on the CUDA cores (≈ 0.4 ms a layer at decode sizes); instead each fp32 weight tile is split
into three bf16 terms, hi + mid + lo, that sum to it exactly (8 + 8 + 8 significand bits), and
three bf16 tensor-core dots accumulate in fp32: every product is exact, as in an fp32 dot.
"""

import torch
import triton
import triton.language as tl

from kernels.interpreter import interpreting

# Up to this many tokens the logits are split over the hidden size across programs, then summed
# in a second kernel: one program a 16-token block read the whole gate in 42 dependent steps.
# H100, CUDA graph, session 17: 12-20 us a layer at T = 1-512 against 45-48 (4 % of an FP8
# decode step at batch 256), the same experts chosen.
PARTS_MAX_T = 4096
MAX_PARTS = 16


@triton.jit
def _dot(h, w, UPCAST: tl.constexpr):
    """h [T, BD] · w [E, BD]^T in fp32; ieee keeps fp32 operands exact (no tf32 rounding)."""
    if UPCAST:
        return tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
    return tl.dot(h, tl.trans(w))


@triton.jit
def _logits(
    h_ptr, w_ptr, rows, row_ok, cols_e, e_ok, d_start, d_end, stride_h, stride_w,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """[BLOCK_T, BLOCK_E] fp32 logits of the hidden columns [d_start, d_end)."""
    offs_d = tl.arange(0, BLOCK_D)
    logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for d0 in range(d_start, d_end, BLOCK_D):
        d_ok = (d0 + offs_d) < d_end
        h = tl.load(
            h_ptr + rows[:, None] * stride_h + d0 + offs_d[None, :],
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + cols_e[:, None] * stride_w + d0 + offs_d[None, :],
            mask=e_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if SPLIT:
            hi = w.to(tl.bfloat16)
            rest = w - hi.to(tl.float32)
            mid = rest.to(tl.bfloat16)
            lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
            logits += _dot(h, hi, UPCAST)
            logits += _dot(h, mid, UPCAST)
            logits += _dot(h, lo, UPCAST)
        else:
            # bf16 x bf16 products are exact in fp32; only the accumulation order differs.
            logits += _dot(h, w, UPCAST)
    return logits


@triton.jit
def _select(
    logits, rows, row_ok, cols_e, e_ok, bias_ptr, tw_ptr, ti_ptr, scaling,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Top-k of logits [BLOCK_T, BLOCK_E] by biased sigmoid score; stores weights and ids."""
    scores = tl.sigmoid(logits)
    bias = tl.load(bias_ptr + cols_e, mask=e_ok, other=0.0)
    choice = tl.where(e_ok[None, :], scores + bias[None, :], float("-inf"))

    cols_k = tl.arange(0, BLOCK_K)
    ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    weights = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.argmax(choice, axis=1)  # [BLOCK_T]
        hit = cols_e[None, :] == best[:, None]
        w_j = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        ids = tl.where(cols_k[None, :] == j, best[:, None].to(tl.int32), ids)
        weights = tl.where(cols_k[None, :] == j, w_j[:, None], weights)
        choice = tl.where(hit, float("-inf"), choice)

    weights = weights / (tl.sum(weights, axis=1)[:, None] + 1e-20) * scaling
    out_offs = rows[:, None] * TOP_K + cols_k[None, :]
    out_mask = row_ok[:, None] & (cols_k[None, :] < TOP_K)
    tl.store(tw_ptr + out_offs, weights, mask=out_mask)
    tl.store(ti_ptr + out_offs, ids, mask=out_mask)


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["T"])
def _moe_route_kernel(
    h_ptr,
    w_ptr,
    bias_ptr,
    tw_ptr,
    ti_ptr,
    T,
    D,
    stride_h,
    stride_w,
    scaling,
    E: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,  # bf16 hidden x fp32 gate: the gate tile as three bf16 terms
    UPCAST: tl.constexpr,  # fp32 ieee dots: fp32 hidden states, and the interpreter (whose
    # dot on bf16 operands is unreliable)
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols_e = tl.arange(0, BLOCK_E)
    row_ok = rows < T
    e_ok = cols_e < E
    logits = _logits(h_ptr, w_ptr, rows, row_ok, cols_e, e_ok, 0, D, stride_h, stride_w,
                     BLOCK_T, BLOCK_E, BLOCK_D, SPLIT, UPCAST)  # fmt: skip
    _select(logits, rows, row_ok, cols_e, e_ok, bias_ptr, tw_ptr, ti_ptr, scaling, TOP_K,
            BLOCK_T, BLOCK_K)  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def _moe_logits_part_kernel(
    h_ptr,
    w_ptr,
    part_ptr,
    T,
    D,
    d_per_part,
    stride_h,
    stride_w,
    E: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # program (token block, part): the logits of hidden columns [part * d_per_part, ...) into
    # part [P, T, BLOCK_E]
    pid_p = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols_e = tl.arange(0, BLOCK_E)
    row_ok = rows < T
    d_start = pid_p * d_per_part
    d_end = tl.minimum(d_start + d_per_part, D)
    logits = _logits(h_ptr, w_ptr, rows, row_ok, cols_e, cols_e < E, d_start, d_end, stride_h,
                     stride_w, BLOCK_T, BLOCK_E, BLOCK_D, SPLIT, UPCAST)  # fmt: skip
    offs = (pid_p * T + rows[:, None]).to(tl.int64) * BLOCK_E + cols_e[None, :]
    tl.store(part_ptr + offs, logits, mask=row_ok[:, None])


@triton.jit(do_not_specialize=["T"])
def _moe_select_kernel(
    part_ptr,
    bias_ptr,
    tw_ptr,
    ti_ptr,
    T,
    num_parts,
    scaling,
    E: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    # the parts' sum in part order (the same logits every run), then the selection
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols_e = tl.arange(0, BLOCK_E)
    row_ok = rows < T
    logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for p in range(0, num_parts):
        offs = (p * T + rows[:, None]).to(tl.int64) * BLOCK_E + cols_e[None, :]
        logits += tl.load(part_ptr + offs, mask=row_ok[:, None], other=0.0)
    _select(logits, rows, row_ok, cols_e, cols_e < E, bias_ptr, tw_ptr, ti_ptr, scaling, TOP_K,
            BLOCK_T, BLOCK_K)  # fmt: skip


def _moe_route_launch(hidden, gate_weight, correction_bias, top_k, routed_scaling_factor):
    """hidden [T, D]; gate_weight [E, D]; correction_bias [E] fp32."""
    T, D = hidden.shape
    E = gate_weight.shape[0]
    assert gate_weight.shape == (E, D), gate_weight.shape
    assert correction_bias.shape == (E,) and correction_bias.dtype == torch.float32
    assert 0 < top_k <= E
    hidden = hidden.contiguous()
    gate_weight = gate_weight.contiguous()
    topk_weights = torch.empty(T, top_k, device=hidden.device, dtype=torch.float32)
    topk_ids = torch.empty(T, top_k, device=hidden.device, dtype=torch.int32)
    interpret = interpreting()
    bf16_hidden = hidden.dtype == torch.bfloat16
    block_d = 32 if interpret else 64
    block_e = max(16, triton.next_power_of_2(E))
    dots = dict(BLOCK_D=block_d, SPLIT=bf16_hidden and gate_weight.dtype != torch.bfloat16,
                UPCAST=interpret or not bf16_hidden)  # fmt: skip
    select = dict(E=E, TOP_K=top_k, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(top_k))
    if T <= PARTS_MAX_T:
        # Decode batches: each program reads a D / parts slice of the gate for 16 tokens.
        d_per_part = triton.cdiv(triton.cdiv(D, block_d), MAX_PARTS) * block_d
        parts = triton.cdiv(D, d_per_part)
        part = torch.empty(parts, T, block_e, device=hidden.device, dtype=torch.float32)
        _moe_logits_part_kernel[(triton.cdiv(T, 16), parts)](
            hidden, gate_weight, part, T, D, d_per_part, hidden.stride(0), gate_weight.stride(0),
            E=E, BLOCK_E=block_e, BLOCK_T=16, **dots, num_warps=4,
        )  # fmt: skip
        _moe_select_kernel[(triton.cdiv(T, 16),)](
            part, correction_bias, topk_weights, topk_ids, T, parts,
            float(routed_scaling_factor), BLOCK_T=16, **select, num_warps=4,
        )  # fmt: skip
        return topk_weights, topk_ids
    _moe_route_kernel[(triton.cdiv(T, 64),)](
        hidden, gate_weight, correction_bias, topk_weights, topk_ids, T, D, hidden.stride(0),
        gate_weight.stride(0), float(routed_scaling_factor), **select, BLOCK_T=64, **dots,
        num_warps=8,
    )  # fmt: skip
    return topk_weights, topk_ids


def moe_route(hidden, gate_weight, correction_bias, top_k, routed_scaling_factor):
    """Route tokens to experts.

    hidden [T, D] (any float dtype); gate_weight [E, D]; correction_bias [E] fp32.
    Returns (topk_weights [T, k] fp32, topk_ids [T, k] int32), experts in descending order
    of biased score.
    """
    return _moe_route_launch(hidden, gate_weight, correction_bias, top_k, routed_scaling_factor)


def moe_route_ref(hidden, gate_weight, correction_bias, top_k, routed_scaling_factor):
    """Plain PyTorch twin of `moe_route` (same shapes and semantics)."""
    logits = hidden.float() @ gate_weight.float().t()  # [T, E]
    scores = logits.sigmoid()
    topk_ids = torch.topk(scores + correction_bias, k=top_k, dim=-1, sorted=True).indices
    weights = scores.gather(1, topk_ids)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * routed_scaling_factor
    return weights, topk_ids.to(torch.int32)
