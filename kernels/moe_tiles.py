"""What the grouped MoE GEMMs share (kernels/moe_experts.py, _fp8.py, _nvfp4.py): the
column launches and the sum over k; the quantized ones also the order of their (row tile,
column block) programs (the bf16 kernel has the same order written inline).

All work alike: moe_align sorts assignments by expert into tiles of BLOCK_M rows; the up
GEMM writes h [R, I] at padded rows, the down GEMM writes each assignment's weighted output
y [A, D] at its own row, and `moe_sum` adds the k rows of a token in fp32 (no atomics:
deterministic).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def tile_of(pid, num_blocks_m, num_blocks_n, group_m):
    """(row tile, column block) of program pid: group_m row tiles sweep the columns together
    (L2 reuse of the activations); group_m = num_blocks_m puts all tiles of one column block
    next to each other, so every expert's weight slab is read from HBM once (decode)."""
    width = group_m * num_blocks_n
    first_m = (pid // width) * group_m
    group_size = min(num_blocks_m - first_m, group_m)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size
    return pid_m, pid_n


def column_launches(N, block_n, split_tail):
    """[(n_start, n_end, block_n)]: one launch over N columns, or with split_tail the whole
    block_n columns and then the remaining N % block_n in one narrower launch."""
    main = N - N % block_n if split_tail else N
    launches = [(0, main, block_n)] if main else []
    if main < N:
        launches.append((main, N, max(16, triton.next_power_of_2(N - main))))
    return launches


@triton.jit
def _moe_sum_kernel(y_ptr, out_ptr, D, TOP_K: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(y_ptr + (t * TOP_K + j) * D + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * D + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def moe_sum(y, top_k):
    """y [T*k, D] -> out [T, D]: out[t] = sum_j y[t*k + j], in fp32, stored in y's dtype."""
    A, D = y.shape
    T = A // top_k
    out = torch.empty(T, D, device=y.device, dtype=y.dtype)
    block_d = 512
    _moe_sum_kernel[(T, triton.cdiv(D, block_d))](y, out, D, TOP_K=top_k, BLOCK_D=block_d)
    return out
