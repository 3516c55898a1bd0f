"""Sort (token, expert) assignments by expert into BLOCK_M-aligned groups.

Letters: T tokens, k experts per token, A = T*k assignments, E experts, M = BLOCK_M.

The grouped GEMM works on tiles of M rows that all belong to one expert, so each expert's
assignments are padded up to a multiple of M. Output (no host sync, sizes are upper bounds):
  sorted_ids [A + E*(M-1)] int32: assignment index a = t*k + j per row, padding rows hold A;
  block_expert [cdiv(A + E*(M-1), M)] int32: expert of each tile, -1 past the last tile;
  expert_offsets [E+1] int32: first padded row of each expert (last entry = padded total).
Row order inside an expert comes from atomics and may vary run to run; every row of the
GEMM is computed independently of its neighbours, so the MoE output does not.
"""

import torch
import triton
import triton.language as tl

# Up to this many assignments (T * k; decode batches of up to 682 tokens at k = 6) one program
# of 16 warps does the whole sort. One block size for all of them: no compile per batch size.
# H100, CUDA graph, M = 16 (session 17): 5.4 / 8.1 / 12.4 us at T = 64 / 256 / 512 against
# 12.3 / 19.9 / 21.8 for the memset and three kernels (4 warps: 7.7 / 15.5 / 26.4).
ONE_PROGRAM_MAX_A = 4096


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["A"])
def _moe_count_kernel(ids_ptr, counts_ptr, A, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < A
    ids = tl.load(ids_ptr + offs, mask=mask, other=0)
    tl.atomic_add(counts_ptr + ids, 1, mask=mask)


@triton.jit
def _tile_layout(
    counts, experts, e_ok, offsets_ptr, cursor_ptr, sorted_ids_ptr, block_expert_ptr, A,
    num_blocks, E: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    # counts [BLOCK_E] -> expert offsets, each expert's first row in cursor, the padding rows'
    # sentinel and the tiles' experts.
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(offsets_ptr + experts, starts, mask=e_ok)
    tl.store(offsets_ptr + E, tl.sum(padded, axis=0))
    tl.store(cursor_ptr + experts, starts, mask=e_ok)

    # Padding rows of each expert's last tile point at the sentinel A.
    pad = tl.arange(0, BLOCK_M)
    pad_rows = starts[:, None] + counts[:, None] + pad[None, :]
    pad_mask = e_ok[:, None] & (pad_rows < ends[:, None])
    tl.store(sorted_ids_ptr + pad_rows, tl.zeros_like(pad_rows) + A, mask=pad_mask)

    # Expert e owns tiles [starts / M, ends / M): one masked store of every expert's i-th tile
    # a step (most experts have one or two at decode); tiles past the total get -1.
    first = starts // BLOCK_M
    tiles = padded // BLOCK_M
    for i in range(0, tl.max(tiles, axis=0)):
        tl.store(block_expert_ptr + first + i, experts, mask=e_ok & (i < tiles))
    for b0 in range(tl.sum(tiles, axis=0), num_blocks, BLOCK_B):
        blocks = b0 + tl.arange(0, BLOCK_B)
        tl.store(block_expert_ptr + blocks, tl.full((BLOCK_B,), -1, tl.int32),
                 mask=blocks < num_blocks)  # fmt: skip


@triton.jit(do_not_specialize=["A", "num_blocks"])
def _moe_offsets_kernel(
    counts_ptr,
    offsets_ptr,
    cursor_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    A,
    num_blocks,
    E: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < E
    counts = tl.load(counts_ptr + experts, mask=e_ok, other=0)
    _tile_layout(counts, experts, e_ok, offsets_ptr, cursor_ptr, sorted_ids_ptr,
                 block_expert_ptr, A, num_blocks, E, BLOCK_M, BLOCK_B)  # fmt: skip


@triton.jit(do_not_specialize=["A", "num_blocks"])
def _moe_align_one_kernel(
    ids_ptr,
    counts_ptr,
    offsets_ptr,
    cursor_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    A,
    num_blocks,
    E: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    # The three kernels' steps in one program, for decode-sized A: no memset, one launch. The
    # barriers order each step's global writes before the next step's reads (one block);
    # volatile loads read what the atomics left in L2.
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < E
    tl.store(counts_ptr + experts, tl.zeros_like(experts), mask=e_ok)
    tl.debug_barrier()
    offs = tl.arange(0, BLOCK_A)
    mask = offs < A
    ids = tl.load(ids_ptr + offs, mask=mask, other=0)
    rank = tl.atomic_add(counts_ptr + ids, 1, mask=mask)  # place inside the expert
    tl.debug_barrier()
    counts = tl.load(counts_ptr + experts, mask=e_ok, other=0, volatile=True)
    _tile_layout(counts, experts, e_ok, offsets_ptr, cursor_ptr, sorted_ids_ptr,
                 block_expert_ptr, A, num_blocks, E, BLOCK_M, BLOCK_B)  # fmt: skip
    tl.debug_barrier()
    start = tl.load(cursor_ptr + ids, mask=mask, other=0, volatile=True)
    tl.store(sorted_ids_ptr + start + rank, offs, mask=mask)


@triton.jit(do_not_specialize=["A"])
def _moe_scatter_kernel(ids_ptr, cursor_ptr, sorted_ids_ptr, A, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < A
    ids = tl.load(ids_ptr + offs, mask=mask, other=0)
    rows = tl.atomic_add(cursor_ptr + ids, 1, mask=mask)
    tl.store(sorted_ids_ptr + rows, offs, mask=mask)


def _moe_align_launch(topk_ids, num_experts, block_m):
    """topk_ids [T, k] int32 with values in [0, E)."""
    assert topk_ids.dim() == 2 and topk_ids.dtype == torch.int32, (topk_ids.shape, topk_ids.dtype)
    ids = topk_ids.contiguous().view(-1)
    A = ids.numel()
    E = num_experts
    max_rows = A + E * (block_m - 1)
    num_blocks = triton.cdiv(max_rows, block_m)
    dev = ids.device
    cursor = torch.empty(E, device=dev, dtype=torch.int32)
    offsets = torch.empty(E + 1, device=dev, dtype=torch.int32)
    sorted_ids = torch.empty(max_rows, device=dev, dtype=torch.int32)
    block_expert = torch.empty(num_blocks, device=dev, dtype=torch.int32)
    shape = dict(E=E, BLOCK_E=triton.next_power_of_2(E), BLOCK_M=block_m, BLOCK_B=64)
    if A <= ONE_PROGRAM_MAX_A:
        counts = torch.empty(E, device=dev, dtype=torch.int32)
        _moe_align_one_kernel[(1,)](
            ids, counts, offsets, cursor, sorted_ids, block_expert, A, num_blocks,
            BLOCK_A=ONE_PROGRAM_MAX_A, **shape, num_warps=16,
        )  # fmt: skip
        return sorted_ids, block_expert, offsets
    counts = torch.zeros(E, device=dev, dtype=torch.int32)
    block = 1024
    grid = (triton.cdiv(A, block),)
    _moe_count_kernel[grid](ids, counts, A, BLOCK=block)
    _moe_offsets_kernel[(1,)](
        counts, offsets, cursor, sorted_ids, block_expert, A, num_blocks, **shape
    )
    _moe_scatter_kernel[grid](ids, cursor, sorted_ids, A, BLOCK=block)
    return sorted_ids, block_expert, offsets


def moe_align(topk_ids, num_experts, block_m):
    """Group assignments by expert in tiles of block_m rows.

    topk_ids [T, k] int32. Returns (sorted_ids [A + E*(M-1)] int32, block_expert
    [cdiv(A + E*(M-1), M)] int32, expert_offsets [E+1] int32); see the module docstring.
    """
    return _moe_align_launch(topk_ids, num_experts, block_m)


def moe_align_ref(topk_ids, num_experts, block_m):
    """Plain PyTorch twin of `moe_align` (rows inside an expert in ascending order)."""
    ids = topk_ids.reshape(-1).long()
    A = ids.numel()
    E, M = num_experts, block_m
    counts = torch.bincount(ids, minlength=E)
    padded = (counts + M - 1) // M * M
    offsets = torch.zeros(E + 1, dtype=torch.long, device=ids.device)
    offsets[1:] = torch.cumsum(padded, 0)
    max_rows = A + E * (M - 1)
    order = torch.argsort(ids, stable=True)
    rank = torch.arange(A, device=ids.device) - (torch.cumsum(counts, 0) - counts)[ids[order]]
    sorted_ids = torch.full((max_rows,), A, dtype=torch.int32, device=ids.device)
    sorted_ids[offsets[ids[order]] + rank] = order.to(torch.int32)
    num_blocks = (max_rows + M - 1) // M
    block_rows = torch.arange(num_blocks, device=ids.device) * M
    block_expert = torch.searchsorted(offsets[1:], block_rows, right=True)
    block_expert = torch.where(block_expert < E, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert, offsets.to(torch.int32)
