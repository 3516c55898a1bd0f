"""Where a decode step's GPU time goes: the kernels of one full-size step, by total time (GPU).

    python -m benchmarks.profile_decode [--batch 64 256] [--ctx 1024]

Builds the full-size LLM with random bf16 weights, fills `ctx` cached tokens per sequence,
then profiles a few eager decode steps (embed, 52 layers, LM head) with torch.profiler and
prints the kernels that hold the most GPU time, per step, beside the step's wall time.
Eager, so each kernel shows; the CUDA-graph step is benchmarks.llm's number.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.llm import timed
from workers.engine.cache import ForwardBatch, HybridCache
from workers.model.fullsize import build_fullsize

STEPS = 5
TOP = 22


def profile_step(llm, bsz: int, ctx: int) -> str:
    cfg = llm.config
    cache = HybridCache(cfg, bsz + 1, (bsz + 1) * (ctx + 8), ctx + 8, "cuda", torch.bfloat16)
    slots = list(range(bsz))
    cache.reserve(slots, [ctx + 1] * bsz)
    for pool in (*cache.k_pool, *cache.v_pool):
        pool.normal_(0, 1)
    ids = torch.randint(0, cfg.vocab_size, (bsz,), device="cuda")
    batch = ForwardBatch.build([1] * bsz, slots, [ctx] * bsz, "cuda")

    def step():
        return llm.logits(llm(llm.embed(ids), batch, cache))

    ms = timed(step, 5)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        gpu_us = e.device_time_total / STEPS
        if gpu_us > 0:
            rows.append((gpu_us, e.count // STEPS, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [
        f"\nbatch {bsz}, ctx {ctx}: eager step {ms:.2f} ms wall, kernels {total / 1e3:.2f} ms GPU",
        f"{'GPU ms/step':>11} {'share':>6} {'calls':>6}  kernel",
    ]
    for us, calls, name in rows[:TOP]:
        lines.append(f"{us / 1e3:11.3f} {us / total:6.1%} {calls:6d}  {name[:110]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    llm = build_fullsize()
    with torch.no_grad():
        for bsz in args.batch:
            print(profile_step(llm, bsz, args.ctx), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
