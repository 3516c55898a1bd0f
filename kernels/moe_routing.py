"""MoE router: fp32 logits, sigmoid scores, biased top-k selection, renormalised weights.

Letters: T tokens, D hidden, E experts, k experts per token.

The correction bias only decides *which* experts are chosen; the combine weights are the
unbiased sigmoid scores of the chosen experts, divided by their sum (+1e-20) and scaled.
One program routes BLOCK_T tokens: the whole [BLOCK_T, E] logit tile stays in registers,
so selection needs no second pass over memory.

The model keeps the gate weight in fp32 and its hidden states in bf16. An fp32 dot would run
on the CUDA cores (≈ 0.4 ms a layer at decode sizes); instead each fp32 weight tile is split
into three bf16 terms, hi + mid + lo, that sum to it exactly (8 + 8 + 8 significand bits), and
three bf16 tensor-core dots accumulate in fp32: every product is exact, as in an fp32 dot.
"""

import torch
import triton
import triton.language as tl

from kernels.interpreter import interpreting


@triton.jit
def _dot(h, w, UPCAST: tl.constexpr):
    """h [T, BD] · w [E, BD]^T in fp32; ieee keeps fp32 operands exact (no tf32 rounding)."""
    if UPCAST:
        return tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
    return tl.dot(h, tl.trans(w))


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
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols_e = tl.arange(0, BLOCK_E)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < T
    e_ok = cols_e < E

    logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
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
    # Decode batches: 16-token programs spread the gate weight's reads over more SMs.
    block_t = 16 if interpret or T <= 4096 else 64
    grid = (triton.cdiv(T, block_t),)
    _moe_route_kernel[grid](
        hidden,
        gate_weight,
        correction_bias,
        topk_weights,
        topk_ids,
        T,
        D,
        hidden.stride(0),
        gate_weight.stride(0),
        float(routed_scaling_factor),
        E=E,
        TOP_K=top_k,
        BLOCK_E=max(16, triton.next_power_of_2(E)),
        BLOCK_K=triton.next_power_of_2(top_k),
        BLOCK_T=block_t,
        BLOCK_D=32 if interpret else 64,
        SPLIT=bf16_hidden and gate_weight.dtype != torch.bfloat16,
        UPCAST=interpret or not bf16_hidden,
        num_warps=8,
    )
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
