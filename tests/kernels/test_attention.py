"""attention_prefill / attention_decode (Triton, interpreted) against the references."""

import pytest
import torch

from kernels.attention import (
    _attention_decode_launch,
    attention_decode,
    attention_decode_ref,
    attention_prefill,
    attention_prefill_ref,
)
from tests.kernels.moe_attn_helpers import assert_close

HQ, HKV, HEAD_DIM, CAPACITY, MAX_LEN = 8, 2, 16, 256, 64
SCALE = HEAD_DIM**-0.5


class Pool:
    """A KV pool whose slots own scattered, non-contiguous rows (like a real allocator)."""

    def __init__(self, dtype, seed=0, slots=6):
        g = torch.Generator().manual_seed(seed)
        self.k = torch.randn(CAPACITY, HKV, HEAD_DIM, generator=g).to(dtype)
        self.v = torch.randn(CAPACITY, HKV, HEAD_DIM, generator=g).to(dtype)
        rows = torch.randperm(CAPACITY, generator=g)[: slots * MAX_LEN // 2]
        self.req_to_token = rows.view(slots, MAX_LEN // 2).repeat(1, 2).to(torch.int32)
        self.g = g

    def args(self):
        return self.k, self.v, self.req_to_token


def packed_batch(pool, slots, context_lens, new_lens, dtype):
    new = torch.tensor(new_lens, dtype=torch.int32)
    cu = torch.zeros(len(new_lens) + 1, dtype=torch.int32)
    cu[1:] = new.cumsum(0)
    q = torch.randn(int(cu[-1]), HQ, HEAD_DIM, generator=pool.g).to(dtype)
    return q, torch.tensor(slots), cu, torch.tensor(context_lens, dtype=torch.int32)


CASES = [
    ([0], [0], [1]),  # a single token
    ([1], [0], [23]),  # one fresh sequence, odd length
    ([2, 0, 5, 1], [0, 5, 17, 1], [7, 1, 20, 13]),  # mixed context, a length-1 sequence
    ([3, 4], [31, 0], [1, 32]),  # exactly the last position of the page row
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slots, ctx, lens", CASES)
def test_prefill_matches_ref(slots, ctx, lens, dtype):
    pool = Pool(dtype, seed=len(lens))
    q, s, cu, c = packed_batch(pool, slots, ctx, lens, dtype)
    out = attention_prefill(q, *pool.args(), s, cu, c, SCALE)
    assert_close("prefill", out, attention_prefill_ref(q, *pool.args(), s, cu, c, SCALE))


def test_prefill_packed_equals_per_sequence():
    pool = Pool(torch.float32, seed=7)
    slots, ctx, lens = [2, 0, 5], [9, 0, 3], [5, 18, 1]
    q, s, cu, c = packed_batch(pool, slots, ctx, lens, torch.float32)
    packed = attention_prefill(q, *pool.args(), s, cu, c, SCALE)
    for b in range(len(lens)):
        lo, hi = int(cu[b]), int(cu[b + 1])
        one_cu = torch.tensor([0, hi - lo], dtype=torch.int32)
        one = attention_prefill(q[lo:hi], *pool.args(), s[b : b + 1], one_cu, c[b : b + 1], SCALE)
        assert_close(f"sequence {b}", one, packed[lo:hi])


def test_chunked_prefill_equals_whole():
    """Prefill in two chunks (second sees the first through the pool) == one chunk."""
    pool = Pool(torch.float32, seed=3)
    q = torch.randn(21, HQ, HEAD_DIM, generator=pool.g)
    s = torch.tensor([1])

    def run(lo, hi):
        cu = torch.tensor([0, hi - lo], dtype=torch.int32)
        ctx = torch.tensor([lo], dtype=torch.int32)
        return attention_prefill(q[lo:hi], *pool.args(), s, cu, ctx, SCALE)

    whole, head, tail = run(0, 21), run(0, 8), run(8, 21)
    assert_close("chunked", torch.cat([head, tail]), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_matches_ref(num_splits, dtype):
    pool = Pool(dtype, seed=5)
    slots = torch.tensor([4, 0, 2, 1])
    seq_lens = torch.tensor([1, 37, 64, 2], dtype=torch.int32)
    q = torch.randn(4, HQ, HEAD_DIM, generator=pool.g).to(dtype)
    out = _attention_decode_launch(q, *pool.args(), slots, seq_lens, SCALE, num_splits)
    assert_close("decode", out, attention_decode_ref(q, *pool.args(), slots, seq_lens, SCALE))


def test_decode_equals_prefill_of_last_token():
    pool = Pool(torch.float32, seed=6)
    slots = torch.tensor([3, 5, 0])
    seq_lens = torch.tensor([19, 1, 50], dtype=torch.int32)
    q = torch.randn(3, HQ, HEAD_DIM, generator=pool.g)
    cu = torch.arange(4, dtype=torch.int32)
    prefill = attention_prefill(q, *pool.args(), slots, cu, seq_lens - 1, SCALE)
    decode = attention_decode(q, *pool.args(), slots, seq_lens, SCALE)
    assert_close("decode vs prefill", decode, prefill)
