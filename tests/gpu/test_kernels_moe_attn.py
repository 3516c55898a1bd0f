"""MoE and attention kernels against their torch references at the real widths, on CUDA.

Run with `pytest -m gpu tests/gpu`. Skipped under TRITON_INTERPRET=1, which the root
conftest sets only on machines without CUDA.
"""

import os

import pytest
import torch

from kernels.attention import (
    attention_decode,
    attention_decode_ref,
    attention_prefill,
    attention_prefill_ref,
)
from kernels.moe_experts import moe_experts, moe_experts_ref
from kernels.moe_routing import moe_route, moe_route_ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton interpreter on"),
]

D, E, TOP_K, INNER = 2688, 128, 6, 1856
HQ, HKV, HEAD_DIM = 32, 2, 128
SCALE = HEAD_DIM**-0.5


def assert_rel(name, out, ref, bound=1e-2):
    """max |out - ref| within bound * max |ref|; no NaN."""
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    diff = (out.float() - ref.float()).abs()
    worst, mean = diff.max().item(), diff.mean().item()
    den = ref.float().abs().max().item()
    assert worst <= bound * den, (
        f"{name}: max diff {worst:.3e} (ref max {den:.3e}), mean {mean:.3e}"
    )


def rnd(*shape, g, scale=1.0, dtype=torch.bfloat16):
    return (scale * torch.randn(*shape, device="cuda", generator=g)).to(dtype)


@pytest.mark.parametrize("gate_dtype", [torch.float32, torch.bfloat16])  # fp32: the model's
@pytest.mark.parametrize("T", [1, 77, 3000, 16384])
def test_moe_route(T, gate_dtype):
    g = torch.Generator(device="cuda").manual_seed(T)
    x, gate = rnd(T, D, g=g), rnd(E, D, g=g, scale=D**-0.5, dtype=gate_dtype)
    bias = 0.01 * torch.randn(E, device="cuda", generator=g)
    w, ids = moe_route(x, gate, bias, TOP_K, 2.5)
    rw, rids = moe_route_ref(x, gate, bias, TOP_K, 2.5)
    ids, order = ids.long().sort(-1)
    rids, rorder = rids.long().sort(-1)
    same = (ids == rids).all(-1)
    # fp32 logits summed in another order may swap near-tied experts in a rare token.
    assert same.float().mean() >= 0.99
    assert_rel("weights", w.gather(1, order)[same], rw.gather(1, rorder)[same], 1e-4)


@pytest.fixture(scope="module")
def expert_weights():
    g = torch.Generator(device="cuda").manual_seed(0)
    return rnd(E, INNER, D, g=g, scale=D**-0.5), rnd(E, D, INNER, g=g, scale=INNER**-0.5)


@pytest.mark.parametrize("T", [1, 32, 256, 4099])  # decode path below 683 tokens
def test_moe_experts(T, expert_weights):
    g = torch.Generator(device="cuda").manual_seed(T)
    x = rnd(T, D, g=g)
    scores = torch.rand(T, E, device="cuda", generator=g)
    ids = scores.topk(TOP_K, dim=-1).indices.to(torch.int32)
    w = torch.rand(T, TOP_K, device="cuda", generator=g)
    args = (x, *expert_weights, w, ids)
    assert_rel(f"T={T}", moe_experts(*args), moe_experts_ref(*args))


def paged(lengths, g):
    total = sum(lengths) + 7
    k, v = rnd(total, HKV, HEAD_DIM, g=g), rnd(total, HKV, HEAD_DIM, g=g)
    perm = torch.randperm(total, device="cuda", generator=g).to(torch.int32)
    req = torch.zeros(len(lengths) + 1, max(lengths), device="cuda", dtype=torch.int32)
    start = 0
    for b, n in enumerate(lengths):
        req[b + 1, :n] = perm[start : start + n]  # slot b+1: slot order != batch order
        start += n
    return k, v, req


def test_attention_prefill_chunked_varlen():
    g = torch.Generator(device="cuda").manual_seed(1)
    ctx_lens, new_lens = [0, 700, 1, 129, 2000], [1000, 333, 1, 64, 1]
    k, v, req = paged([c + n for c, n in zip(ctx_lens, new_lens, strict=True)], g)
    cu = torch.zeros(len(new_lens) + 1, device="cuda", dtype=torch.int32)
    cu[1:] = torch.tensor(new_lens, device="cuda").cumsum(0)
    q = rnd(int(cu[-1]), HQ, HEAD_DIM, g=g)
    slots = torch.arange(1, len(new_lens) + 1, device="cuda")
    ctx = torch.tensor(ctx_lens, device="cuda", dtype=torch.int32)
    args = (q, k, v, req, slots, cu, ctx, SCALE)
    assert_rel("prefill", attention_prefill(*args), attention_prefill_ref(*args))


@pytest.mark.parametrize("B", [1, 37])
def test_attention_decode(B):
    g = torch.Generator(device="cuda").manual_seed(B)
    lengths = torch.randint(1, 3000, (B,), generator=torch.Generator().manual_seed(B)).tolist()
    k, v, req = paged(lengths, g)
    q = rnd(B, HQ, HEAD_DIM, g=g)
    slots = torch.arange(1, B + 1, device="cuda")
    seq_lens = torch.tensor(lengths, device="cuda", dtype=torch.int32)
    args = (q, k, v, req, slots, seq_lens, SCALE)
    assert_rel(f"decode B={B}", attention_decode(*args), attention_decode_ref(*args))
