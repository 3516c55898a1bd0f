"""What every kernel benchmark shares: the measured ceilings, timing, error, rows, the table.

Ceilings from docs/performance.md, measured on the H200: bf16 dense matmul
767 TFLOP/s, device copy 4.24 TB/s (bytes read + written).
"""

from __future__ import annotations

import torch
import triton

BF16_TFLOPS = 767.0
COPY_TBS = 4.24
LLM_FLOP_PER_TOKEN = 5.75e9  # 2 x 2.87 B active LLM parameters (no embeddings) per token


def median_ms(fn) -> float:
    return triton.testing.do_bench(fn, return_mode="median")


def rel_err(outs, refs) -> float:
    """max|op - ref| / max|ref| over all outputs (tensors or lists of tensors); no NaN allowed."""
    outs = outs if isinstance(outs, list | tuple) else [outs]
    refs = refs if isinstance(refs, list | tuple) else [refs]
    assert all(torch.isfinite(o).all() for o in outs), "NaN or inf in the op's output"
    num = max((o.float() - r.float()).abs().max().item() for o, r in zip(outs, refs, strict=True))
    den = max(r.float().abs().max().item() for r in refs)
    return num / max(den, 1e-30)


def row(op, shape, ms, amount, kind, err, baseline_ms=None, **extra) -> dict:
    """amount: FLOPs when kind == 'TFLOP/s', bytes when kind == 'TB/s'; err None for a
    reference timed on its own."""
    rate = amount / (ms * 1e-3) / 1e12
    ceiling = BF16_TFLOPS if kind == "TFLOP/s" else COPY_TBS
    return dict(
        op=op,
        shape=shape,
        ms=ms,
        metric=f"{rate:.2f} {kind}",
        pct_of_ceiling=100 * rate / ceiling,
        max_rel_err=err,
        baseline_ms=baseline_ms,
        **extra,
    )


def format_table(rows: list[dict]) -> str:
    lines = [
        "| op | shape | ms | achieved | % of ceiling | max rel err | baseline ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = "" if r["baseline_ms"] is None else f"{r['baseline_ms']:.3f}"
        err = "" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['ms']:.3f} | {r['metric']} | "
            f"{r['pct_of_ceiling']:.1f} | {err} | {base} |"
        )
    return "\n".join(lines)
