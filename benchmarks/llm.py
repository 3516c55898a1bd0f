"""LLM prefill, decode and context scaling at full size with random bf16 weights (GPU).

    python -m benchmarks.llm [--quick]

Counts (docs/performance.md): ≈ 5.75 GFLOP per prefill token (2.87 B active
parameters without embeddings), + 0.7 GFLOP LM head per sampled token; MFU against the
measured 767 TFLOP/s bf16 ceiling. Decode at batch B touches ~all 128 experts: ≈ 58.7 GB of
expert weights + 4.4 GB others + fp32 Mamba state read and written per step.
Prints a short table last; full JSON to $OUT/llm.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

from benchmarks.common import BF16_TFLOPS, LLM_FLOP_PER_TOKEN
from workers.engine.decode_graphs import DecodeGraphs
from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.fullsize import build_fullsize, parameter_counts


def timed(fn, repeats: int) -> float:
    """Median milliseconds of `fn()` over `repeats` runs after one warm-up, CUDA events."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def prefill_ms(llm, cache, lens: list[int], chunk: int, repeats: int) -> float:
    """Median time to prefill sequences of `lens` from empty slots, `chunk` tokens per step."""
    d = llm.config.hidden_size
    embeds = [torch.randn(n, d, device="cuda", dtype=torch.bfloat16) * 0.02 for n in lens]
    slots = list(range(len(lens)))
    cache.reserve(slots, lens)

    def run():
        done = [0] * len(lens)
        while any(x < n for x, n in zip(done, lens, strict=True)):
            budget, idx, pieces = chunk, [], []
            for b, n in enumerate(lens):
                take = min(n - done[b], budget)
                if take > 0:
                    idx.append(b)
                    pieces.append(embeds[b][done[b] : done[b] + take])
                    budget -= take
            batch = ForwardBatch.build(
                [p.shape[0] for p in pieces],
                [slots[b] for b in idx],
                [done[b] for b in idx],
                "cuda",
            )
            llm(torch.cat(pieces), batch, cache)
            for b, p in zip(idx, pieces, strict=True):
                done[b] += p.shape[0]

    return timed(run, repeats)


def decode_inputs(llm, bsz: int, ctx: int) -> tuple[HybridCache, torch.Tensor, ForwardBatch]:
    """A cache holding `bsz` sequences of `ctx` random cached tokens (+ a scratch slot), one
    input token each, and their decode batch."""
    cfg = llm.config
    cache = HybridCache(
        cfg, bsz + 1, (bsz + 1) * (ctx + 8), ctx + 8, "cuda", torch.bfloat16, llm.kv_dtype
    )
    slots = list(range(bsz))
    cache.reserve(slots, [ctx + 1] * bsz)
    for pool in (*cache.k_pool, *cache.v_pool):
        pool.copy_(torch.randn(pool.shape, device="cuda"))  # FP8 pools have no normal_
    ids = torch.randint(0, cfg.vocab_size, (bsz,), device="cuda")
    return cache, ids, ForwardBatch.build([1] * bsz, slots, [ctx] * bsz, "cuda")


def decode_rows(llm, bsz: int, ctx: int, reps: int) -> list[dict]:
    """Decode steps of `bsz` sequences with `ctx` cached tokens each: eager and CUDA graph."""
    cache, ids, batch = decode_inputs(llm, bsz, ctx)
    name = f"decode b{bsz} ctx{ctx}"
    eager = timed(lambda: llm.logits(llm(llm.embed(ids), batch, cache)), reps * 3)
    rows = [{"bench": f"{name} eager", "ms": eager, "tok_s": bsz / eager * 1e3}]
    try:
        graphs = DecodeGraphs(llm, cache, [bsz])
        ms = timed(lambda: llm.logits(graphs.run(llm.embed(ids), batch)), reps * 5)
        rows.append({"bench": f"{name} graph", "ms": ms, "tok_s": bsz / ms * 1e3})
    except Exception as exc:  # report it and keep benchmarking
        rows.append({"bench": f"{name} graph", "error": repr(exc)[:200]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = ap.parse_args()
    reps = 2 if args.quick else 3
    torch.manual_seed(0)
    llm = build_fullsize()
    counts = parameter_counts(llm)
    rows, results = [], {"params": counts}
    print(f"parameters: {counts['total'] / 1e9:.3f} B", flush=True)

    # correctness: kernels vs PyTorch references on the same GPU, one 300-token prompt
    cfg = llm.config
    cache = HybridCache(cfg, 2, 4096, 4096, "cuda", torch.bfloat16)
    x = torch.randn(300, cfg.hidden_size, device="cuda", dtype=torch.bfloat16) * 0.02
    outs = []
    for use_ref in (False, True):
        for conv, ssm in zip(cache.conv_state, cache.ssm_state, strict=True):
            conv.zero_()
            ssm.zero_()
        cache.reserve([0], [300])
        batch = ForwardBatch.build([300], [0], [0], "cuda")
        if use_ref:
            with ops.reference():
                outs.append(llm.logits(llm(x, batch, cache)[-8:]))
        else:
            outs.append(llm.logits(llm(x, batch, cache)[-8:]))
    rel = ((outs[0] - outs[1]).norm() / outs[1].norm()).item()
    results["kernels_vs_reference_rel_err"] = rel
    print(f"logits rel err kernels vs reference: {rel:.2e}", flush=True)
    del cache

    # prefill throughput and context scaling
    series = [("prefill 1x16K", [16384], 16384), ("prefill 4x4K", [4096] * 4, 16384)]
    scaling = [8192, 32768] if args.quick else [8192, 32768, 131072]
    series += [(f"scaling 1x{n // 1024}K", [n], 16384) for n in scaling]
    for name, lens, chunk in series:
        cache = HybridCache(cfg, len(lens), sum(lens), max(lens), "cuda", torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
        ms = prefill_ms(llm, cache, lens, chunk, reps)
        tok = sum(lens)
        row = {
            "bench": name,
            "ms": ms,
            "tok_s": tok / ms * 1e3,
            "us_per_token": ms * 1e3 / tok,
            "mfu": tok * LLM_FLOP_PER_TOKEN / (ms * 1e-3) / (BF16_TFLOPS * 1e12),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
        }
        rows.append(row)
        print(row, flush=True)
        del cache
        torch.cuda.empty_cache()

    for bsz, ctx in [(32, 1024), (256, 1024)]:
        for row in decode_rows(llm, bsz, ctx, reps):
            rows.append(row)
            print(row, flush=True)
        torch.cuda.empty_cache()

    results["rows"] = rows
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "llm.json"), "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n{'bench':28} {'ms':>9} {'tok/s':>10} {'us/tok':>8} {'MFU':>6} {'peak GB':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['bench']:28} {r['error']}")
            continue
        print(
            f"{r['bench']:28} {r['ms']:9.2f} {r['tok_s']:10.0f} {r.get('us_per_token', 0):8.2f} "
            f"{r.get('mfu', 0):6.1%} {r.get('peak_gb', 0):8.1f}"
        )


if __name__ == "__main__":
    main()
