"""Attention over an FP8 KV pool: the references against dequantized pools."""

import torch

from kernels.attention import attention_decode_ref, attention_prefill_ref
from kernels.quant_formats import dequant_fp8, fp8_scale, quantize_fp8
from tests.kernels.quant_helpers import cosine
from tests.kernels.test_attention import HEAD_DIM, Pool, packed_batch

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
