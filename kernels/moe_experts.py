"""Routed MoE experts: out = sum_k w_k * down_e(relu(up_e(x))^2), as a grouped GEMM.

Letters: T tokens, D hidden, I expert inner size, E experts, k experts per token,
A = T*k assignments, R = padded rows (moe_align), M = BLOCK_M.

Steps:
1. moe_align groups assignments by expert into tiles of M rows.
2. up GEMM: each tile gathers its tokens' rows of x, multiplies by up[e]^T, applies relu^2
   in fp32 and writes the intermediate h [R, I] in x's dtype, row = padded position, so
   step 3 reads h contiguously.
3. down GEMM: h tile x down[e]^T, scaled by the assignment's combine weight, written to
   y [A, D] at the assignment's own row (no atomics: deterministic).
4. sum over k: out[t] = sum_j y[t*k + j] in fp32.

Prefill uses 128-row tiles with a grouped raster for L2 reuse. Decode (few rows per expert)
uses 16-row tiles and a raster in which all tiles of one output-column block run together:
every touched expert's weight slab then comes from HBM once, and untouched experts have no
tiles, so their weights are never read.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.interpreter import interpreting
from kernels.moe_align import moe_align
from kernels.moe_tiles import column_launches, moe_sum


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    # N % block_n columns go to a second, narrower launch instead of mostly-masked tiles
    # (I = 1856 = 7.25 x 256: the last up tile would do 4x the work it keeps).
    split_tail: bool = False


# Best of small sweeps on the H200 (2026-11-28). Prefill T=16K: up 514 / down 550 TFLOP/s
# (3 stages: 476 / 517; BLOCK_N 128: 445 / 471); whole op with align and sum 463-479 with
# the tail split, 456-458 without; 64-row tiles 413-423. Decode T=256: up 4.0 / down 3.6
# TB/s of touched weights. group_m 0 = all tiles of a column block.
_PREFILL = GemmConfig(128, 256, 64, 8, 8, 4, split_tail=True)
_DECODE = GemmConfig(16, 64, 128, 0, 4, 5)
_INTERPRET = GemmConfig(16, 16, 16, 4, 4, 1, split_tail=True)
# Below this many assignments per expert on average, tiles are mostly padding: decode path.
_DECODE_ROWS_PER_EXPERT = 32


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["num_valid", "num_blocks_m", "group_m"])
def _moe_gemm_kernel(
    a_ptr,
    w_ptr,
    c_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    topk_w_ptr,
    num_valid,
    n_start,
    n_end,
    K,
    num_blocks_m,
    stride_am,
    stride_we,
    stride_wn,
    stride_cm,
    group_m,
    TOP_K: tl.constexpr,
    UP: tl.constexpr,
    UPCAST: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # UP: a = x [T, K] gathered by token, c = h [R, N] at padded rows, relu^2 applied.
    # down: a = h [R, K] contiguous, c = y [A, N] at assignment rows, combine weight applied.
    # This launch covers output columns [n_start, n_end).
    pid = tl.program_id(0)
    num_blocks_n = tl.cdiv(n_end - n_start, BLOCK_N)
    width = group_m * num_blocks_n
    group = pid // width
    first_m = group * group_m
    group_size = min(num_blocks_m - first_m, group_m)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size

    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rows)  # assignment index, num_valid on padding rows
    valid = ids < num_valid
    # Up gathers token rows (padding rows read token 0, never stored); down reads h in order.
    a_rows = tl.where(valid, ids // TOP_K, 0) if UP else rows
    offs_n = n_start + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = tl.where(offs_n < n_end, offs_n, 0)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + w_rows[None, :] * stride_wn + offs_k[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    n_ok = offs_n < n_end
    if UP:
        acc = tl.maximum(acc, 0.0)
        acc = acc * acc
        c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=n_ok[None, :])
    else:
        weight = tl.load(topk_w_ptr + ids, mask=valid, other=0.0)
        acc = acc * weight[:, None]
        c_ptrs = c_ptr + ids[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])


def _gemm(a, w, c, sorted_ids, block_expert, topk_w, num_valid, top_k, up, cfg, upcast):
    """One of the op's two GEMMs; with `split_tail` the columns past the last whole BLOCK_N
    go to a second launch of narrower tiles."""
    N, K = w.shape[1], w.shape[2]
    num_blocks_m = block_expert.numel()
    for n_start, n_end, block_n in column_launches(N, cfg.block_n, cfg.split_tail):
        grid = (num_blocks_m * triton.cdiv(n_end - n_start, block_n),)
        _moe_gemm_kernel[grid](
            a,
            w,
            c,
            sorted_ids,
            block_expert,
            topk_w,
            num_valid,
            n_start,
            n_end,
            K,
            num_blocks_m,
            a.stride(0),
            w.stride(0),
            w.stride(1),
            c.stride(0),
            cfg.group_m or num_blocks_m,
            TOP_K=top_k,
            UP=up,
            UPCAST=upcast,
            EVEN_K=K % cfg.block_k == 0,
            BLOCK_M=cfg.block_m,
            BLOCK_N=block_n,
            BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )


def pick_config(num_tokens, top_k, num_experts):
    """GemmConfig of both GEMMs: the decode one when prefill tiles would be mostly padding."""
    if interpreting():
        return _INTERPRET
    if num_tokens * top_k < _DECODE_ROWS_PER_EXPERT * num_experts:
        return _DECODE
    return _PREFILL


def _moe_experts_launch(x, up, down, topk_weights, topk_ids, config):
    """x [T, D]; up [E, I, D]; down [E, D, I]; topk_weights [T, k] fp32; topk_ids [T, k] int32."""
    T, D = x.shape
    E, inner, _ = up.shape
    k = topk_ids.shape[1]
    assert up.shape == (E, inner, D), up.shape
    assert down.shape == (E, D, inner), down.shape
    assert topk_ids.shape == (T, k) and topk_ids.dtype == torch.int32
    assert topk_weights.shape == (T, k) and topk_weights.dtype == torch.float32
    assert up.stride(2) == 1 and down.stride(2) == 1, "expert weights must be row-major"
    x = x.contiguous()
    topk_weights = topk_weights.contiguous()
    cfg = config or pick_config(T, k, E)
    upcast = interpreting()

    sorted_ids, block_expert, _ = moe_align(topk_ids, E, cfg.block_m)
    h = torch.empty(sorted_ids.numel(), inner, device=x.device, dtype=x.dtype)  # [R, I]
    y = torch.empty(T * k, D, device=x.device, dtype=x.dtype)  # [A, D]
    common = (sorted_ids, block_expert, topk_weights, T * k, k)
    _gemm(x, up, h, *common, up=True, cfg=cfg, upcast=upcast)
    _gemm(h, down, y, *common, up=False, cfg=cfg, upcast=upcast)
    return moe_sum(y, k)


def workspace_bytes(num_tokens, top_k, num_experts, inner, hidden, itemsize, decode=False):
    """Bytes `moe_experts` allocates for `num_tokens` tokens, at its peak (the launcher's
    buffers): moe_align's sorted ids and tile experts, h [R, I], y [A, D] and out [T, D].
    `decode` picks the decode tiling (16-row tiles, less padding) instead of prefill's."""
    m = (_DECODE if decode else _PREFILL).block_m
    assignments = num_tokens * top_k
    rows = assignments + num_experts * (m - 1)
    align = 4 * (rows + triton.cdiv(rows, m) + 3 * num_experts + 1)
    return align + itemsize * (rows * inner + (assignments + num_tokens) * hidden)


def moe_experts(x, up, down, topk_weights, topk_ids, config: GemmConfig | None = None):
    """Routed experts (shared expert not included).

    x [T, D]; up [E, I, D]; down [E, D, I] (nn.Linear [out, in] layout);
    topk_weights [T, k] fp32; topk_ids [T, k] int32. Returns out [T, D] in x's dtype.
    `config` None picks the tiling by size (pick_config); benchmarks pass others to compare.
    """
    return _moe_experts_launch(x, up, down, topk_weights, topk_ids, config)


def moe_experts_ref(x, up, down, topk_weights, topk_ids):
    """Plain PyTorch twin of `moe_experts`: a loop over the experts that got tokens."""
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    flat_ids = topk_ids.reshape(-1).long()
    for e in torch.unique(flat_ids).tolist():
        assign = (flat_ids == e).nonzero().squeeze(1)  # [n] indices into T*k
        tokens = assign // topk_ids.shape[1]
        h = torch.relu(x[tokens].float() @ up[e].float().t()).square().to(x.dtype)
        y = h.float() @ down[e].float().t() * topk_weights.reshape(-1)[assign, None]
        out.index_add_(0, tokens, y.to(x.dtype).float())
    return out.to(x.dtype)
