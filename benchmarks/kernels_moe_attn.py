"""GPU benchmarks of the MoE and attention kernels at the real shapes (docs/model.md §1.3, §1.4).

Each bench_* function checks the Triton op against its torch reference on the GPU, times
both with triton.testing.do_bench (median; it flushes L2 between runs) and reports the
achieved rate from the formula beside it against the H200 ceilings of docs/performance.md.
Baselines: the torch references for MoE, torch SDPA on contiguous K/V for attention.
max_rel_err = max|op - ref| / max|ref|.

    python -m benchmarks.kernels_moe_attn
"""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import median_ms, rel_err, row
from kernels.attention import (
    attention_decode,
    attention_decode_ref,
    attention_prefill,
    attention_prefill_ref,
)
from kernels.moe_experts import GemmConfig, moe_experts, moe_experts_ref
from kernels.moe_routing import moe_route, moe_route_ref

D, E, TOP_K, INNER, ROUTED_SCALE = 2688, 128, 6, 1856, 2.5
HQ, HKV, HEAD_DIM = 32, 2, 128
SCALE = HEAD_DIM**-0.5


def _moe_inputs(T, g):
    """bf16 hidden states; the gate weight in fp32, as the model keeps it."""
    x = torch.randn(T, D, device="cuda", generator=g).to(torch.bfloat16)
    gate = torch.randn(E, D, device="cuda", generator=g) / D**0.5
    bias = 0.01 * torch.randn(E, device="cuda", generator=g)
    return x, gate, bias


def bench_moe_routing(tokens=(16384, 256)):
    """FLOPs = 2*T*E*D (the logit GEMM); ids compared as sets, weights where the sets agree."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for T in tokens:
        x, gate, bias = _moe_inputs(T, g)
        args = (x, gate, bias, TOP_K, ROUTED_SCALE)
        w, ids = moe_route(*args)
        rw, rids = moe_route_ref(*args)
        ids, order = ids.long().sort(-1)
        rids, rorder = rids.long().sort(-1)
        same = (ids == rids).all(-1)
        err = rel_err(w.gather(1, order)[same], rw.gather(1, rorder)[same])
        ms, base = (
            median_ms(lambda a=args: moe_route(*a)),
            median_ms(lambda a=args: moe_route_ref(*a)),
        )
        rows.append(
            row("moe_route", f"T={T}", ms, 2 * T * E * D, "TFLOP/s", err, base,
                 tokens_with_other_experts=int((~same).sum()))
        )  # fmt: skip
    return rows


def bench_moe_experts(tokens=(16384, 256, 32)):
    """Prefill: FLOPs = 2*T*k*(D*I*2). Decode: bytes = touched experts * 2 * D*I * 2 bytes."""
    g = torch.Generator(device="cuda").manual_seed(1)
    up = (torch.randn(E, INNER, D, device="cuda", generator=g) / D**0.5).to(torch.bfloat16)
    down = (torch.randn(E, D, INNER, device="cuda", generator=g) / INNER**0.5).to(torch.bfloat16)
    rows = []
    for T in tokens:
        x, gate, bias = _moe_inputs(T, g)
        w, ids = moe_route(x, gate, bias, TOP_K, ROUTED_SCALE)
        args = (x, up, down, w, ids)
        err = rel_err(moe_experts(*args), moe_experts_ref(*args))
        ms, base = (
            median_ms(lambda a=args: moe_experts(*a)),
            median_ms(lambda a=args: moe_experts_ref(*a)),
        )
        touched = int(torch.unique(ids).numel())
        if T * TOP_K >= 32 * E:
            amount, kind = 2 * T * TOP_K * D * INNER * 2, "TFLOP/s"
        else:
            amount, kind = touched * 2 * D * INNER * 2, "TB/s"
        rows.append(
            row("moe_experts", f"T={T}", ms, amount, kind, err, base, experts_touched=touched)
        )
        if kind == "TFLOP/s":
            rows += _moe_tilings(args, amount, f"T={T}")
    return rows


# Prefill tilings timed beside the default (pick_config): the column tail in the wide tiles,
# and 64-row tiles (one warpgroup, half the per-expert padding rows).
_TILINGS = {
    "no tail split": GemmConfig(128, 256, 64, 8, 8, 4),
    "64-row tiles": GemmConfig(64, 256, 64, 8, 4, 4, split_tail=True),
    "64-row tiles, 3 stages": GemmConfig(64, 256, 64, 8, 4, 3, split_tail=True),
}


def _moe_tilings(args, flops, shape):
    ref = moe_experts(*args)
    rows = []
    for name, cfg in _TILINGS.items():
        err = rel_err(moe_experts(*args, config=cfg), ref)
        ms = median_ms(lambda a=args, c=cfg: moe_experts(*a, config=c))
        rows.append(row(f"moe_experts ({name})", shape, ms, flops, "TFLOP/s", err))
    return rows


def _paged_pool(lengths, g):
    """K/V pool holding the sequences at shuffled rows; req_to_token [B, max(lengths)]."""
    total = sum(lengths)
    k_pool = torch.randn(total, HKV, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
    v_pool = torch.randn(total, HKV, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
    perm = torch.randperm(total, device="cuda", generator=g).to(torch.int32)
    req = torch.zeros(len(lengths), max(lengths), device="cuda", dtype=torch.int32)
    start = 0
    for b, n in enumerate(lengths):
        req[b, :n] = perm[start : start + n]
        start += n
    return k_pool, v_pool, req


def _contiguous_kv(pool, req, lengths):
    """[B, Hkv, L, d] copies for the SDPA baseline (all sequences of one length)."""
    return torch.stack([pool[req[b, :n].long()].transpose(0, 1) for b, n in enumerate(lengths)])


def _sdpa(q, k, v, causal):
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=SCALE, enable_gqa=True
        )


def bench_attention_prefill(batches=((16384,), (4096,) * 4)):
    """FLOPs (causal) = sum_b 2 * Hq * d * n_b * (n_b + 1): QK^T and PV over the lower triangle."""
    g = torch.Generator(device="cuda").manual_seed(2)
    rows = []
    for lengths in batches:
        B, T, n = len(lengths), sum(lengths), lengths[0]
        k_pool, v_pool, req = _paged_pool(lengths, g)
        q = torch.randn(T, HQ, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
        cu = torch.zeros(B + 1, device="cuda", dtype=torch.int32)
        cu[1:] = torch.tensor(lengths, device="cuda").cumsum(0)
        slots = torch.arange(B, device="cuda")
        ctx = torch.zeros(B, device="cuda", dtype=torch.int32)
        args = (q, k_pool, v_pool, req, slots, cu, ctx, SCALE)
        err = rel_err(attention_prefill(*args), attention_prefill_ref(*args))
        ms = median_ms(lambda a=args: attention_prefill(*a))
        qb = q.view(B, n, HQ, HEAD_DIM).transpose(1, 2)
        kb, vb = _contiguous_kv(k_pool, req, lengths), _contiguous_kv(v_pool, req, lengths)
        base = median_ms(lambda a=(qb, kb, vb): _sdpa(*a, causal=True))
        flops = sum(2 * HQ * HEAD_DIM * m * (m + 1) for m in lengths)
        rows.append(row("attention_prefill", f"{B}x{n}", ms, flops, "TFLOP/s", err, base))
    return rows


def bench_attention_decode(batch=256, context=5000):
    """Bytes = K and V of every sequence: 2 * B * L * Hkv * d * 2 (q and o are negligible)."""
    g = torch.Generator(device="cuda").manual_seed(3)
    lengths = [context] * batch
    k_pool, v_pool, req = _paged_pool(lengths, g)
    q = torch.randn(batch, HQ, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
    slots = torch.arange(batch, device="cuda")
    seq_lens = torch.full((batch,), context, device="cuda", dtype=torch.int32)
    args = (q, k_pool, v_pool, req, slots, seq_lens, SCALE)
    err = rel_err(attention_decode(*args), attention_decode_ref(*args))
    ms = median_ms(lambda: attention_decode(*args))
    kb, vb = _contiguous_kv(k_pool, req, lengths), _contiguous_kv(v_pool, req, lengths)
    base = median_ms(lambda: _sdpa(q[:, :, None], kb, vb, causal=False))
    amount = 2 * batch * context * HKV * HEAD_DIM * 2
    return [row("attention_decode", f"B={batch} L={context}", ms, amount, "TB/s", err, base)]


def all_rows():
    return (
        bench_moe_routing()
        + bench_moe_experts()
        + bench_attention_prefill()
        + bench_attention_decode()
    )
