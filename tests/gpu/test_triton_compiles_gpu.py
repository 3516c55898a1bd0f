"""benchmarks.triton_compiles on the GPU: a compile is counted once per new specialisation of
a kernel's arguments, and not when the same one runs again."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs

from benchmarks.triton_compiles import TritonCompiles

pytestmark = pytest.mark.gpu


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


def test_each_new_specialisation_compiles_once_and_is_counted():
    x = torch.zeros(64, device="cuda")
    with TritonCompiles() as compiles:
        for n in (17, 17, 32, 33):  # 32 is divisible by 16: a second specialisation of n
            _add_one[(1,)](x, n, BLOCK=64)
        torch.cuda.synchronize()
    assert compiles.kernels == {"_add_one": 2} and compiles.seconds > 0
    assert knobs.runtime.jit_cache_hook is None  # put back
    assert torch.equal(x[:17].cpu(), torch.full((17,), 4.0))


def test_new_batch_shapes_do_not_recompile_the_varlen_and_moe_kernels():
    """Packed prefill batches of other token and sequence counts (1, multiples of 16, odd) run
    the kernels compiled for the first batch: their batch-sized integers are unspecialised and
    the block table's columns stay 16-byte aligned."""
    from kernels.moe_align import moe_align
    from kernels.varlen import block_table

    def batch(lens):
        cu = torch.tensor([0, *lens], device="cuda").cumsum(0).to(torch.int32)
        block_table(cu, sum(lens), 128)
        ids = torch.randint(0, 128, (sum(lens), 6), device="cuda", dtype=torch.int32)
        moe_align(ids, 128, 64)

    batch([300, 17])  # compiles what the others reuse
    with TritonCompiles() as compiles:
        for lens in ([1], [16], [512, 512], [333, 1, 70], [4096, 17, 5, 5, 5]):
            batch(lens)
        torch.cuda.synchronize()
    assert compiles.count == 0, compiles.kernels
