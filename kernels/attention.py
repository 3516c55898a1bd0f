"""Causal GQA attention over a token-granular paged KV pool (no positional encoding).

Letters: T packed new tokens, B sequences, S cache slots, L keys of a sequence,
Hq query heads, Hkv KV heads, G = Hq / Hkv, d head dim.

KV pool per layer: k_pool / v_pool [capacity, Hkv, d]; req_to_token [S, max_len] int32 maps
(slot, position) to a pool row. The caller has written the new tokens' K/V rows already.

Prefill: one program per (q head, BLOCK_M new tokens of one sequence), flash-style online
softmax in base 2. Keys below the tile's first position are visible to every row and skip
the causal mask; only the last few key blocks are masked. Heads are the fastest grid axis,
so the G heads that share a KV head read the same K/V tiles from L2.
Decode: one program per (sequence, KV head, split) handles all G query heads of that KV
head as the M dimension of the tile, so K/V are read from HBM once per sequence; long
contexts are cut into splits whose partial results a second kernel merges by log-sum-exp.

FP8 KV cache: with k_scale / v_scale (fp32 0-d, static per layer) the pools hold E4M3 and a
stored row means row * scale. The MMAs then run in fp16 (q cast once; _operand_dtype), tiles
are cast to fp16 as they are loaded (exact) and the scales are applied in fp32 where they
factor out: k_scale into the softmax scale, v_scale on the normalized output. The caller
writes rows as quantize_fp8(k, k_scale).
"""

from functools import lru_cache

import torch
import triton
import triton.language as tl

from kernels.interpreter import interpreting

_LOG2E = 1.4426950408889634
# (BLOCK_M, BLOCK_N, num_warps, num_stages) for prefill, (BLOCK_N, num_warps, num_stages)
# for decode: best of a small sweep on the H200 (2026-11-28).
_PREFILL_CFG = (128, 64, 4, 4)
_DECODE_CFG = (64, 4, 3)


@triton.jit
def _operand_dtype(q, UPCAST: tl.constexpr, SCALED: tl.constexpr):
    # The dtype of the MMAs' operands, q's: fp32 in the interpreter; fp16 for an E4M3 pool,
    # whose tiles then convert in one instruction a pair (to bf16: two more an element; the FP8
    # decode K loop 805 -> 616 SASS instructions with K loaded [N, d]). E4M3 values are exact
    # in fp16, p in [0, 1] keeps 3 more bits than in bf16, and bf16 q of |q| < 65504 converts
    # exactly but for fp16 subnormals (|q| < 6.1e-5, a negligible part of any dot).
    if UPCAST:
        q = q.to(tl.float32)
    elif SCALED:
        q = q.to(tl.float16)
    return q


@triton.jit
def _attend_block(
    q,
    acc,
    m_i,
    l_i,
    k_base,
    v_base,
    req_row,
    n0,
    n_end,
    pos_m,
    stride_kr,
    stride_vr,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
):
    # One key block of the online softmax. q [R, d]; acc [R, d]; m_i, l_i [R]; pos_m [R].
    # K/V tiles take q's dtype: bf16 (or fp32 in the interpreter) from a bf16 or E4M3 pool.
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if MASK:
        n_ok = offs_n < n_end
        # Out-of-range keys read pool row 0 and are masked out of the scores below.
        rows = tl.load(req_row + offs_n, mask=n_ok, other=0).to(tl.int64)
    else:
        rows = tl.load(req_row + offs_n).to(tl.int64)
    k = tl.load(k_base + rows[:, None] * stride_kr + offs_d[None, :])  # [BLOCK_N, d]
    v = tl.load(v_base + rows[:, None] * stride_vr + offs_d[None, :])  # [BLOCK_N, d]
    k = k.to(q.dtype)
    v = v.to(q.dtype)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASK:
        s = tl.where((offs_n[None, :] <= pos_m[:, None]) & n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
    return acc, m_new, l_i


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["num_seqs"])
def _attn_prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    req_ptr,
    slots_ptr,
    cu_ptr,
    ctx_ptr,
    block_end_ptr,
    k_scale_ptr,
    v_scale_ptr,
    num_seqs,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_kr,
    stride_kh,
    stride_vr,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_req,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    UPCAST: tl.constexpr,
    SCALED: tl.constexpr,
):
    h = tl.program_id(0)
    pid = tl.program_id(1)
    seqs = tl.arange(0, BLOCK_S)
    # block_end[b] = q tiles of sequences 0..b (inclusive cumsum): find this tile's sequence.
    ends = tl.load(block_end_ptr + seqs, mask=seqs < num_seqs, other=2147483647)
    b = tl.sum((ends <= pid).to(tl.int32), axis=0)
    if b >= num_seqs:
        return
    # The first tile of each sequence in launch order is its last (longest causal row).
    mblk = tl.load(block_end_ptr + b) - 1 - pid
    q_start = tl.load(cu_ptr + b)
    q_len = tl.load(cu_ptr + b + 1) - q_start
    ctx = tl.load(ctx_ptr + b)
    slot = tl.load(slots_ptr + b).to(tl.int64)

    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < q_len
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=m_ok[:, None],
        other=0.0,
    )
    q = _operand_dtype(q, UPCAST, SCALED)
    if SCALED:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    pos_m = ctx + offs_m
    kvh = h // GROUP
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    req_row = req_ptr + slot * stride_req

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    full_end = (ctx + mblk * BLOCK_M) // BLOCK_N * BLOCK_N
    kv_end = ctx + tl.minimum((mblk + 1) * BLOCK_M, q_len)
    for n0 in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_block(
            q, acc, m_i, l_i, k_base, v_base, req_row, n0, kv_end, pos_m,
            stride_kr, stride_vr, qk_scale, BLOCK_N, HEAD_DIM, False,
        )  # fmt: skip
    for n0 in range(full_end, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_block(
            q, acc, m_i, l_i, k_base, v_base, req_row, n0, kv_end, pos_m,
            stride_kr, stride_vr, qk_scale, BLOCK_N, HEAD_DIM, True,
        )  # fmt: skip
    out = acc / l_i[:, None]
    if SCALED:
        out = out * tl.load(v_scale_ptr)
    tl.store(
        o_ptr + q_rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=m_ok[:, None],
    )


@triton.jit
def _attn_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    part_o_ptr,
    part_lse_ptr,
    req_ptr,
    slots_ptr,
    seq_lens_ptr,
    k_scale_ptr,
    v_scale_ptr,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_kr,
    stride_kh,
    stride_vr,
    stride_vh,
    stride_ob,
    stride_oh,
    stride_req,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr,
    SCALED: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, seq_len)

    g = tl.arange(0, GROUP_PAD)
    g_ok = g < GROUP
    heads = kvh * GROUP + g
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_ok[:, None],
        other=0.0,
    )
    q = _operand_dtype(q, UPCAST, SCALED)
    if SCALED:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    pos = tl.zeros((GROUP_PAD,), dtype=tl.int32) + seq_len - 1
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    req_row = req_ptr + slot * stride_req

    m_i = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((GROUP_PAD, HEAD_DIM), dtype=tl.float32)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        acc, m_i, l_i = _attend_block(
            q, acc, m_i, l_i, k_base, v_base, req_row, n0, n_hi, pos,
            stride_kr, stride_vr, qk_scale, BLOCK_N, HEAD_DIM, True,
        )  # fmt: skip

    if SCALED:
        acc = acc * tl.load(v_scale_ptr)
    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        o_ptrs = o_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])
    else:
        # An empty split (short sequence) leaves l_i = 0: it contributes weight exp2(-inf) = 0.
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        row = (b * GROUP * tl.num_programs(1) + heads) * NUM_SPLITS + split  # [B, Hq, splits]
        tl.store(part_lse_ptr + row, lse, mask=g_ok)
        tl.store(part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=g_ok[:, None])


@triton.jit
def _attn_merge_kernel(
    part_o_ptr,
    part_lse_ptr,
    o_ptr,
    num_heads,
    stride_ob,
    stride_oh,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    row = (b * num_heads + h) * NUM_SPLITS + sp
    sp_ok = sp < NUM_SPLITS
    lse = tl.load(part_lse_ptr + row, mask=sp_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    part = tl.load(
        part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], mask=sp_ok[:, None], other=0.0
    )
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty))


def _check_pool(q, k_pool, v_pool, req_to_token, k_scale, v_scale):
    Hq, d = q.shape[1], q.shape[2]
    Hkv = k_pool.shape[1]
    assert k_pool.shape[1:] == (Hkv, d) and v_pool.shape == k_pool.shape, (k_pool.shape, d)
    assert Hq % Hkv == 0, (Hq, Hkv)
    assert d == triton.next_power_of_2(d) and d >= 16, d
    assert k_pool.stride(2) == 1 and v_pool.stride(2) == 1
    assert req_to_token.dtype == torch.int32 and req_to_token.stride(1) == 1
    fp8 = k_pool.dtype == torch.float8_e4m3fn
    assert v_pool.dtype == k_pool.dtype, (k_pool.dtype, v_pool.dtype)
    assert (k_scale is not None) == fp8 == (v_scale is not None), (
        "an E4M3 pool needs k_scale and v_scale, a bf16 pool neither"
    )
    if fp8:
        assert k_scale.numel() == v_scale.numel() == 1
        assert k_scale.dtype == v_scale.dtype == torch.float32, (k_scale.dtype, v_scale.dtype)
    return Hq // Hkv


def _attention_prefill_launch(
    q, k_pool, v_pool, req_to_token, slots, cu_seqlens, context_lens, scale, k_scale, v_scale
):
    """q [T, Hq, d]; k_pool, v_pool [cap, Hkv, d] (bf16, or E4M3 with k_scale, v_scale fp32
    0-d); req_to_token [S, max_len] int32; slots [B] int; cu_seqlens [B+1] int32;
    context_lens [B] int32."""
    T, Hq, d = q.shape
    B = slots.shape[0]
    assert cu_seqlens.shape == (B + 1,) and context_lens.shape == (B,), (cu_seqlens.shape, B)
    group = _check_pool(q, k_pool, v_pool, req_to_token, k_scale, v_scale)
    assert q.stride(2) == 1
    block_m, block_n, warps, stages = (16, 16, 4, 1) if interpreting() else _PREFILL_CFG
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    block_end = torch.cumsum(torch.div(lens + block_m - 1, block_m, rounding_mode="floor"), 0)
    block_end = block_end.to(torch.int32)
    o = torch.empty_like(q)
    grid = (Hq, triton.cdiv(T, block_m) + B)
    _attn_prefill_kernel[grid](
        q, k_pool, v_pool, o, req_to_token, slots, cu_seqlens, context_lens, block_end,
        k_scale if k_scale is not None else q, v_scale if v_scale is not None else q,
        B, scale * _LOG2E,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1),
        v_pool.stride(0), v_pool.stride(1), o.stride(0), o.stride(1), req_to_token.stride(0),
        GROUP=group, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_S=max(16, triton.next_power_of_2(B)), UPCAST=interpreting(),
        SCALED=k_scale is not None,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o


@lru_cache
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Decode programs of the E4M3-pool kernel resident on one multiprocessor: 168 registers a
# thread x 128 threads (sm_90, _DECODE_CFG) leave room for 3.
_FP8_DECODE_PROGRAMS_PER_SM = 3


def decode_splits(batch, kv_heads, device, fp8=False):
    """Splits per sequence. bf16 pools: (sequences x KV heads x splits) fills the GPU twice;
    the kernel reads at the card's bandwidth, more programs read no faster. E4M3 pools: the
    kernel is bound by its instructions, so its time goes by waves of resident programs: the
    fewest splits within 10 % of the fewest waves per unit of work (each split adds merge work
    and a shorter loop). H100, session 17, B x L = 256 x 5 200: 0.380 ms with 1 split (the
    bf16 rule's), 0.317 / 0.316 / 0.336 with 2 / 3 / 4 (this rule: 3); 92 x 5 200: 2 splits
    0.119 ms, 1 / 3 / 4 / 6: 0.165 / 0.149 / 0.128 / 0.131; 64 x 32 000: 3 splits 0.428,
    4 / 5 / 6: 0.545 / 0.483 / 0.431 (both rules: 2 and 3)."""
    if device.type != "cuda":
        return 2  # the interpreter: exercise the merge path
    programs = batch * kv_heads
    sms = _sm_count(device.index or 0)
    if not fp8:
        return max(1, min(16, triton.cdiv(2 * sms, programs)))
    return wave_splits(programs, _FP8_DECODE_PROGRAMS_PER_SM * sms)


def wave_splits(programs, resident):
    """The fewest splits (1-16) within 10 % of the fewest waves of `resident` programs per
    unit of work, for `programs` programs a split."""
    waves = {n: triton.cdiv(programs * n, resident) / n for n in range(1, 17)}
    fewest = min(waves.values())
    return min(n for n, w in waves.items() if w <= 1.1 * fewest)


def _attention_decode_launch(
    q, k_pool, v_pool, req_to_token, slots, seq_lens, scale, num_splits=None,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """q [B, Hq, d]; k_pool, v_pool [cap, Hkv, d] (bf16, or E4M3 with k_scale, v_scale fp32
    0-d); req_to_token [S, max_len] int32; slots [B] int; seq_lens [B] int32 (new token
    included)."""
    B, Hq, d = q.shape
    assert slots.shape == (B,) and seq_lens.shape == (B,), (slots.shape, seq_lens.shape)
    group = _check_pool(q, k_pool, v_pool, req_to_token, k_scale, v_scale)
    assert q.stride(2) == 1
    Hkv = k_pool.shape[1]
    splits = num_splits or decode_splits(B, Hkv, q.device, k_scale is not None)
    block_n, warps, stages = (16, 4, 1) if interpreting() else _DECODE_CFG
    o = torch.empty_like(q)
    part_o = part_lse = o  # unused when there is a single split
    if splits > 1:
        part_o = torch.empty(B, Hq, splits, d, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(B, Hq, splits, device=q.device, dtype=torch.float32)
    _attn_decode_kernel[(B, Hkv, splits)](
        q, k_pool, v_pool, o, part_o, part_lse, req_to_token, slots, seq_lens,
        k_scale if k_scale is not None else q, v_scale if v_scale is not None else q,
        scale * _LOG2E,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1),
        v_pool.stride(0), v_pool.stride(1), o.stride(0), o.stride(1), req_to_token.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d,
        BLOCK_N=block_n, NUM_SPLITS=splits, UPCAST=interpreting(), SCALED=k_scale is not None,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if splits > 1:
        _attn_merge_kernel[(B, Hq)](
            part_o, part_lse, o, Hq, o.stride(0), o.stride(1),
            NUM_SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), HEAD_DIM=d,
        )  # fmt: skip
    return o


def attention_prefill(
    q, k_pool, v_pool, req_to_token, slots, cu_seqlens, context_lens, scale,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """Causal attention of packed new tokens over their sequences' cached + new keys.

    q [T, Hq, d]; k_pool, v_pool [cap, Hkv, d]; req_to_token [S, max_len] int32;
    slots [B] int; cu_seqlens [B+1] int32; context_lens [B] int32. Sequence b's new tokens
    sit at positions context_lens[b] .. context_lens[b] + len_b - 1. An FP8 KV cache passes
    E4M3 pools with their k_scale, v_scale (fp32 0-d). Returns o [T, Hq, d].
    """
    return _attention_prefill_launch(
        q, k_pool, v_pool, req_to_token, slots, cu_seqlens, context_lens, scale, k_scale, v_scale
    )


def attention_decode(
    q, k_pool, v_pool, req_to_token, slots, seq_lens, scale, k_scale=None, v_scale=None
):
    """One new token per sequence attending over all its keys.

    q [B, Hq, d]; k_pool, v_pool [cap, Hkv, d]; req_to_token [S, max_len] int32;
    slots [B] int; seq_lens [B] int32 (the new token included). An FP8 KV cache passes
    E4M3 pools with their k_scale, v_scale (fp32 0-d). Returns o [B, Hq, d].
    """
    return _attention_decode_launch(
        q, k_pool, v_pool, req_to_token, slots, seq_lens, scale, k_scale=k_scale, v_scale=v_scale
    )


def _attend_ref(q, k_pool, v_pool, rows, context_len, scale, k_scale, v_scale):
    """q [n, Hq, d] at positions context_len.. over pool rows [L]; fp32 math; an FP8 pool is
    dequantized with its scale first."""
    n, Hq, _ = q.shape
    L = rows.shape[0]
    k = _dequant_rows(k_pool, rows, k_scale).transpose(0, 1)  # [Hkv, L, d]
    v = _dequant_rows(v_pool, rows, v_scale).transpose(0, 1)
    allowed = torch.arange(L, device=q.device)[None, :] <= (
        context_len + torch.arange(n, device=q.device)[:, None]
    )
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1), k, v, attn_mask=allowed, scale=scale, enable_gqa=True
    )  # [Hq, n, d]
    return out.transpose(0, 1).to(q.dtype)


def _dequant_rows(pool, rows, pool_scale):
    """pool[rows] in fp32: times pool_scale for an FP8 pool."""
    rows_f = pool[rows].float()
    return rows_f if pool_scale is None else rows_f * pool_scale.float()


def attention_prefill_ref(
    q, k_pool, v_pool, req_to_token, slots, cu_seqlens, context_lens, scale,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """Plain PyTorch twin of `attention_prefill`: one masked SDPA per sequence."""
    o = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    for b, (slot, ctx) in enumerate(zip(slots.tolist(), context_lens.tolist(), strict=True)):
        start, end = cu[b], cu[b + 1]
        if end == start:
            continue
        rows = req_to_token[slot, : ctx + end - start].long()
        o[start:end] = _attend_ref(q[start:end], k_pool, v_pool, rows, ctx, scale, k_scale, v_scale)
    return o


def attention_decode_ref(
    q, k_pool, v_pool, req_to_token, slots, seq_lens, scale, k_scale=None, v_scale=None
):
    """Plain PyTorch twin of `attention_decode`."""
    o = torch.empty_like(q)
    for b, (slot, n) in enumerate(zip(slots.tolist(), seq_lens.tolist(), strict=True)):
        rows = req_to_token[slot, :n].long()
        o[b : b + 1] = _attend_ref(
            q[b : b + 1], k_pool, v_pool, rows, n - 1, scale, k_scale, v_scale
        )
    return o
