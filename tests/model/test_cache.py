"""HybridCache bookkeeping and ForwardBatch construction (CPU, tiny config)."""

import pytest
import torch

from tests.factories import TINY_LLM
from workers.model.cache import CacheFullError, ForwardBatch, HybridCache, kv_row_bytes

CFG = TINY_LLM


def make_cache(slots=3, rows=16, max_len=10):
    return HybridCache(CFG, slots, rows, max_len, "cpu", torch.float32)


def test_shapes_follow_config():
    cache = make_cache()
    assert len(cache.conv_state) == len(cache.ssm_state) == 1
    assert cache.conv_state[0].shape == (3 + 1, CFG.conv_dim, CFG.conv_kernel - 1)  # + scratch
    assert cache.ssm_state[0].shape == (3 + 1, 2, 4, 4)
    assert cache.ssm_state[0].dtype == torch.float32
    assert len(cache.k_pool) == 1 and cache.k_pool[0].shape == (16 + 1, 1, 4)
    assert cache.req_to_token.shape == (3 + 1, 10)


def test_fp8_kv_pools_and_row_bytes():
    cache = HybridCache(CFG, 3, 16, 10, "cpu", torch.float32, torch.float8_e4m3fn)
    assert cache.k_pool[0].dtype == cache.v_pool[0].dtype == torch.float8_e4m3fn
    assert cache.conv_state[0].dtype == torch.float32
    # one attention layer, K and V, 1 KV head of 4
    assert kv_row_bytes(CFG, torch.float8_e4m3fn.itemsize) == 2 * 4 == kv_row_bytes(CFG, 2) // 2


def test_slots_alloc_free_and_exhaustion():
    cache = make_cache()
    got = [cache.alloc_slot() for _ in range(3)]
    assert sorted(got) == [0, 1, 2]
    with pytest.raises(CacheFullError):
        cache.alloc_slot()
    cache.free_slot(got[1])
    assert cache.alloc_slot() == got[1]
    with pytest.raises(ValueError):
        cache.free_slot(7)


def test_realloc_zeroes_recurrent_state():
    cache = make_cache()
    s = cache.alloc_slot()
    cache.conv_state[0][s].fill_(3.0)
    cache.ssm_state[0][s].fill_(5.0)
    cache.free_slot(s)
    assert cache.alloc_slot() == s
    assert cache.conv_state[0][s].abs().sum() == 0
    assert cache.ssm_state[0][s].abs().sum() == 0


def test_reserve_gives_distinct_rows_and_free_returns_them():
    cache = make_cache()
    a, b = cache.alloc_slot(), cache.alloc_slot()
    cache.reserve([a, b], [5, 3])
    cache.reserve([a, b], [6, 3])  # decode-like growth of one sequence, no-op for the other
    assert cache.reserved_len(a) == 6 and cache.reserved_len(b) == 3
    rows = torch.cat([cache.req_to_token[a, :6], cache.req_to_token[b, :3]])
    assert rows.unique().numel() == 9
    assert cache.num_free_rows == 16 - 9
    cache.free_slot(a)
    assert cache.num_free_rows == 16 - 3
    c = cache.alloc_slot()
    cache.reserve([c], [10])  # reuses a's rows without touching b's
    assert not set(cache.req_to_token[c, :10].tolist()) & set(cache.req_to_token[b, :3].tolist())


def test_reserve_limits():
    cache = make_cache(rows=8, max_len=10)
    a, b = cache.alloc_slot(), cache.alloc_slot()
    with pytest.raises(CacheFullError):
        cache.reserve([a], [11])
    cache.reserve([a], [6])
    with pytest.raises(CacheFullError):
        cache.reserve([b], [3])
    assert cache.num_free_rows == 2 and cache.reserved_len(b) == 0
    with pytest.raises(ValueError):
        cache.reserve([a, a], [7, 7])


def test_kv_rows_prefill_and_decode():
    cache = make_cache()
    a, b = cache.alloc_slot(), cache.alloc_slot()
    cache.reserve([a, b], [7, 2])
    # a continues after 4 cached tokens with 3 new ones, b starts with 2
    batch = ForwardBatch.build([3, 2], [a, b], [4, 0], "cpu")
    assert not batch.is_decode
    want = torch.cat([cache.req_to_token[a, 4:7], cache.req_to_token[b, 0:2]]).long()
    assert torch.equal(cache.kv_rows(batch, 5), want)
    cache.reserve([a, b], [8, 3])
    step = ForwardBatch.build([1, 1], [a, b], [7, 2], "cpu")
    assert step.is_decode and step.num_seqs == 2
    want = torch.stack([cache.req_to_token[a, 7], cache.req_to_token[b, 2]]).long()
    assert torch.equal(cache.kv_rows(step, 2), want)


def test_forward_batch_build_rejects_bad_input():
    with pytest.raises(ValueError):
        ForwardBatch.build([2, 0], [0, 1], [0, 0], "cpu")
    with pytest.raises(ValueError):
        ForwardBatch.build([2], [0, 1], [0, 0], "cpu")
    batch = ForwardBatch.build([2, 5], [1, 0], [0, 3], "cpu")
    assert batch.cu_seqlens.tolist() == [0, 2, 7]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.slots.dtype == torch.int64
