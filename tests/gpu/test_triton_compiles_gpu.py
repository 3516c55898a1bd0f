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
