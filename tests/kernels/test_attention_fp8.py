"""Attention over an FP8 KV pool: the references against dequantized pools."""

import pytest
import torch

from kernels.attention import (
    _attention_decode_launch,
    attention_decode,
    attention_decode_ref,
    attention_prefill,
    attention_prefill_ref,
    wave_splits,
)
from kernels.quant_formats import dequant_fp8, fp8_scale, quantize_fp8
from tests.kernels.moe_attn_helpers import assert_close
from tests.kernels.quant_helpers import cosine
from tests.kernels.test_attention import CASES, HEAD_DIM, Pool, packed_batch

SCALE = HEAD_DIM**-0.5


def fp8_pool(pool):
    """(k_fp8, v_fp8, k_scale, v_scale) of a bf16/fp32 pool: one static scale per tensor."""
    k_scale, v_scale = fp8_scale(pool.k) * 1.5, fp8_scale(pool.v)
    return quantize_fp8(pool.k, k_scale), quantize_fp8(pool.v, v_scale), k_scale, v_scale


def test_prefill_ref_dequantizes_the_pool():
    pool = Pool(torch.bfloat16, seed=1)
    q, s, cu, c = packed_batch(pool, [2, 0, 5], [0, 5, 17], [7, 1, 20], torch.bfloat16)
    kq, vq, ks, vs = fp8_pool(pool)
    out = attention_prefill_ref(q, kq, vq, pool.req_to_token, s, cu, c, SCALE, ks, vs)
    deq = (dequant_fp8(kq, ks), dequant_fp8(vq, vs), pool.req_to_token)
    assert torch.equal(out, attention_prefill_ref(q, *deq, s, cu, c, SCALE))
    assert cosine(out, attention_prefill_ref(q, *pool.args(), s, cu, c, SCALE)) > 0.995


def test_decode_ref_dequantizes_the_pool():
    pool = Pool(torch.bfloat16, seed=2)
    slots = torch.tensor([4, 0, 2])
    seq_lens = torch.tensor([1, 37, 64], dtype=torch.int32)
    q = torch.randn(3, 8, HEAD_DIM, generator=pool.g).to(torch.bfloat16)
    kq, vq, ks, vs = fp8_pool(pool)
    out = attention_decode_ref(q, kq, vq, pool.req_to_token, slots, seq_lens, SCALE, ks, vs)
    deq = (dequant_fp8(kq, ks), dequant_fp8(vq, vs), pool.req_to_token)
    assert torch.equal(out, attention_decode_ref(q, *deq, slots, seq_lens, SCALE))
    assert cosine(out, attention_decode_ref(q, *pool.args(), slots, seq_lens, SCALE)) > 0.995


@pytest.mark.parametrize("slots, ctx, lens", CASES)
def test_prefill_kernel_matches_ref(slots, ctx, lens):
    pool = Pool(torch.bfloat16, seed=len(lens))
    q, s, cu, c = packed_batch(pool, slots, ctx, lens, torch.bfloat16)
    kq, vq, ks, vs = fp8_pool(pool)
    args = (q, kq, vq, pool.req_to_token, s, cu, c, SCALE, ks, vs)
    assert_close("prefill fp8", attention_prefill(*args), attention_prefill_ref(*args))


def test_prefill_kernel_packed_equals_per_sequence():
    pool = Pool(torch.bfloat16, seed=7)
    q, s, cu, c = packed_batch(pool, [2, 0, 5], [9, 0, 3], [5, 18, 1], torch.bfloat16)
    kq, vq, ks, vs = fp8_pool(pool)
    packed = attention_prefill(q, kq, vq, pool.req_to_token, s, cu, c, SCALE, ks, vs)
    for b in range(3):
        lo, hi = int(cu[b]), int(cu[b + 1])
        one_cu = torch.tensor([0, hi - lo], dtype=torch.int32)
        one = attention_prefill(
            q[lo:hi], kq, vq, pool.req_to_token, s[b : b + 1], one_cu, c[b : b + 1], SCALE, ks, vs
        )
        assert_close(f"sequence {b}", one, packed[lo:hi])


@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_kernel_matches_ref(num_splits):
    pool = Pool(torch.bfloat16, seed=5)
    slots = torch.tensor([4, 0, 2, 1])
    seq_lens = torch.tensor([1, 37, 64, 2], dtype=torch.int32)
    q = torch.randn(4, 8, HEAD_DIM, generator=pool.g).to(torch.bfloat16)
    kq, vq, ks, vs = fp8_pool(pool)
    args = (q, kq, vq, pool.req_to_token, slots, seq_lens, SCALE)
    out = _attention_decode_launch(*args, num_splits, ks, vs)
    assert_close("decode fp8", out, attention_decode_ref(*args, ks, vs))
    public = attention_decode(*args, ks, vs)
    assert torch.equal(public, _attention_decode_launch(*args, None, ks, vs))


def test_pool_dtype_and_scales_must_agree():
    pool = Pool(torch.bfloat16, seed=1)
    q, s, cu, c = packed_batch(pool, [1], [0], [3], torch.bfloat16)
    kq, vq, ks, vs = fp8_pool(pool)
    with pytest.raises(AssertionError, match="E4M3 pool needs"):
        attention_prefill(q, kq, vq, pool.req_to_token, s, cu, c, SCALE)
    with pytest.raises(AssertionError, match="E4M3 pool needs"):
        attention_prefill(q, *pool.args(), s, cu, c, SCALE, ks, vs)


@pytest.mark.parametrize(
    "batch, want",
    # an H100's 132 multiprocessors x 3 programs; each the best measured (RESULTS.md, session 17)
    [(256, 3), (92, 2), (64, 3)],
)
def test_wave_splits_pick_the_measured_best(batch, want):
    assert wave_splits(batch * 2, 3 * 132) == want  # 2 KV heads


def test_wave_splits_fill_the_card_for_one_sequence():
    assert wave_splits(2, 396) == 15  # one wave whatever the splits: 15 is within 10 % of 16
    assert wave_splits(10_000, 396) == 1  # 26 nearly full waves: no split pays
