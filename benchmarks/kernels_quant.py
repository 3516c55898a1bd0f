"""Quantized kernels against their bf16 twins on the same card in the same run (issue 13).

Rows (each checks the op against its torch reference first; max_rel_err = max|op - ref| /
max|ref|; times are medians of triton.testing.do_bench, CUDA events, L2 flushed, warm-up):
  fp8_linear     prefill M=16384: FLOPs = 2*M*N*K, against torch._scaled_mm on the same FP8
                 tensors (x quantized beforehand; the target is >= 70 % of its rate; also
                 timed with its use_fast_accum) and a bf16 cuBLAS matmul; at prefill also
                 "x in E4M3", the GEMM alone on the same FP8 x. Decode M=1/64/256: bytes =
                 N*K weight bytes.
  moe_experts_fp8 / _nvfp4  T=16384: FLOPs = 2*T*k*(2*D*I) against our bf16 moe_experts on
                 the dequantized weights (target fp8 >= 1.6x). Decode T=1/64/256: bytes =
                 touched experts x 2*D*I x bytes per weight (fp8 1, nvfp4 0.5 + 1/16 of the
                 block scales, bf16 2), with % of this card's copy bandwidth (read + write,
                 measured here; target nvfp4 >= 60 % at 64-256).
  attention fp8 kv  prefill 4x4096 (causal FLOPs) and decode B=256 L=5000 (KV bytes), against
                 the bf16 KV cache.

    python -m benchmarks.kernels_quant            # the table; JSON to $OUT/kernels_quant.json
    python -m benchmarks.kernels_quant --sweep    # also a few tilings per kernel, best printed
    python -m benchmarks.kernels_quant --small    # tiny shapes (TRITON_INTERPRET=1 on a CPU)
"""

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from benchmarks.common import rel_err
from kernels.attention import (
    attention_decode,
    attention_decode_ref,
    attention_prefill,
    attention_prefill_ref,
)
from kernels.fp8_linear import fp8_linear, fp8_linear_ref
from kernels.moe_experts import moe_experts
from kernels.moe_experts_fp8 import moe_experts_fp8, moe_experts_fp8_ref
from kernels.moe_experts_nvfp4 import Nvfp4Weight, moe_experts_nvfp4, moe_experts_nvfp4_ref
from kernels.quant_formats import dequant_fp8, fp8_scale, quantize_fp8


@dataclass(frozen=True)
class Shapes:
    D: int
    I: int  # noqa: E741 (the model's letter)
    E: int
    k: int
    dense: dict  # name -> (N, K)
    prefill_tokens: int
    decode_tokens: tuple
    hkv: int
    hq: int
    head_dim: int
    attn_prefill: tuple  # sequence lengths
    attn_decode: tuple  # (batch, context)


FULL = Shapes(
    D=2688, I=1856, E=128, k=6,
    dense={"in_proj": (10304, 2688), "out_proj": (2688, 4096), "shared_up": (3712, 2688),
           "shared_down": (2688, 3712), "o_proj": (2688, 4096)},
    prefill_tokens=16384, decode_tokens=(1, 64, 256),
    hkv=2, hq=32, head_dim=128, attn_prefill=(4096,) * 4, attn_decode=(256, 5000),
)  # fmt: skip
SMALL = Shapes(
    D=32, I=48, E=4, k=2, dense={"in_proj": (48, 32), "out_proj": (32, 48)},
    prefill_tokens=40, decode_tokens=(1, 5), hkv=2, hq=4, head_dim=16,
    attn_prefill=(20, 20), attn_decode=(2, 24),
)  # fmt: skip


def time_ms(fn):
    """Median ms of do_bench on CUDA; in the CPU interpreter (--small: a dry run of the
    benchmark's code, no timing to speak of) the wall clock of one run."""
    if torch.cuda.is_available():
        return triton.testing.do_bench(fn, return_mode="median")
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def copy_tbs(device):
    """Device-to-device copy of 1 GiB: (bytes read + written) / time, in TB/s."""
    n = 1 << 30 if device.type == "cuda" else 1 << 20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * n / (time_ms(lambda: dst.copy_(src)) * 1e-3) / 1e12


def qrow(op, shape, ms, amount, kind, err, base_ms=None, base_name=None, copy=None, **extra):
    """amount: FLOPs for TFLOP/s, bytes for TB/s. vs_base = baseline time / op time."""
    rate = amount / (ms * 1e-3) / 1e12
    return dict(
        op=op, shape=shape, ms=ms, metric=f"{rate:.3f} {kind}", rate=rate, kind=kind,
        max_rel_err=err, baseline_ms=base_ms, baseline=base_name,
        vs_base=None if base_ms is None else base_ms / ms,
        pct_of_ceiling=100 * rate / copy if kind == "TB/s" and copy else float("nan"), **extra,
    )  # fmt: skip


def bench_fp8_linear(sh, dev, copy):
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for name, (N, K) in sh.dense.items():
        w = torch.randn(N, K, device=dev, generator=g) * K**-0.5
        ws = fp8_scale(w)
        wq, wb = quantize_fp8(w, ws), w.to(torch.bfloat16)
        for M in (sh.prefill_tokens, *sh.decode_tokens):
            x = torch.randn(M, K, device=dev, generator=g).to(torch.bfloat16)
            xs = fp8_scale(x)
            args = (x, wq, ws, xs)
            err = rel_err(fp8_linear(*args), fp8_linear_ref(*args))
            ms = time_ms(lambda a=args: fp8_linear(*a))
            bf16 = time_ms(lambda x=x, wb=wb: F.linear(x, wb))
            xq = quantize_fp8(x, xs)
            scaled = _scaled_mm_ms(xq, wq, xs, ws)
            scaled_fast = _scaled_mm_ms(xq, wq, xs, ws, fast_accum=True)
            shape = f"{name} {M}x{N}x{K}"
            if sh.prefill_tokens == M:
                amount, kind = 2 * M * N * K, "TFLOP/s"
            else:
                amount, kind = N * K, "TB/s"
            rows.append(qrow("fp8_linear", shape, ms, amount, kind, err, scaled, "_scaled_mm",
                             copy, bf16_ms=bf16, scaled_mm_fast_accum_ms=scaled_fast))  # fmt: skip
            if sh.prefill_tokens == M:  # the GEMM alone, on the FP8 x _scaled_mm gets
                args = (xq, wq, ws, xs)
                err = rel_err(fp8_linear(*args), fp8_linear_ref(*args))
                ms = time_ms(lambda a=args: fp8_linear(*a))
                rows.append(qrow("fp8_linear, x in E4M3", shape, ms, amount, kind, err, scaled,
                                 "_scaled_mm", copy,
                                 scaled_mm_fast_accum_ms=scaled_fast))  # fmt: skip
    return rows


def _scaled_mm_ms(xq, wq, xs, ws, fast_accum=False):
    """torch._scaled_mm on the same FP8 tensors (x already quantized), or None where this
    torch / device has none. fast_accum: its use_fast_accum (no promotion into fp32)."""
    try:
        fn = lambda: torch._scaled_mm(
            xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=fast_accum
        )
        fn()
    except (RuntimeError, NotImplementedError) as e:
        print(f"note: torch._scaled_mm unavailable ({str(e).splitlines()[0]})")
        return None
    return time_ms(fn)


def _experts(sh, dev, g):
    up = torch.randn(sh.E, sh.I, sh.D, device=dev, generator=g) * sh.D**-0.5
    down = torch.randn(sh.E, sh.D, sh.I, device=dev, generator=g) * sh.I**-0.5
    return up, down


def _routing(sh, T, dev, g):
    scores = torch.rand(T, sh.E, device=dev, generator=g)
    ids = scores.topk(sh.k, dim=-1).indices.to(torch.int32)
    return torch.rand(T, sh.k, device=dev, generator=g), ids


def moe_fp8_weights(sh, dev, g):
    up, down = _experts(sh, dev, g)
    up_s, down_s = up.abs().amax((1, 2)) / 448, down.abs().amax((1, 2)) / 448
    up_q, down_q = quantize_fp8(up, up_s), quantize_fp8(down, down_s)
    x_s, h_s = torch.tensor(4.5 / 448, device=dev), torch.tensor(20.0 / 448, device=dev)
    return up_q, down_q, up_s, down_s, x_s, h_s


def moe_bf16_twin(fp8):
    """The FP8 experts (moe_fp8_weights) dequantized to bf16: (up, down), the bf16 kernel's
    baseline of the same sizes."""
    up, down, up_s, down_s = fp8[:4]
    return dequant_fp8(up, up_s).bfloat16(), dequant_fp8(down, down_s).bfloat16()


def moe_nvfp4_weights(sh, dev, g):
    def one(N, K):
        shape = (sh.E, N, K // 2)
        packed = torch.randint(0, 256, shape, device=dev, generator=g, dtype=torch.uint8)
        block = torch.rand(sh.E, N, K // 16, device=dev, generator=g) * 3 + 1
        scale_2 = torch.full((sh.E,), 0.4 * K**-0.5, device=dev)
        return Nvfp4Weight(packed, block.to(torch.float8_e4m3fn), scale_2)

    return one(sh.I, sh.D), one(sh.D, sh.I)


def bench_moe(sh, dev, copy):
    g = torch.Generator(device=dev).manual_seed(1)
    fp8 = moe_fp8_weights(sh, dev, g)
    nv = moe_nvfp4_weights(sh, dev, g)
    # The bf16 kernel on the FP8 weights dequantized: same sizes, same routing.
    bf16 = moe_bf16_twin(fp8)
    rows = []
    for T in (sh.prefill_tokens, *sh.decode_tokens):
        x = torch.randn(T, sh.D, device=dev, generator=g).to(torch.bfloat16)
        route = _routing(sh, T, dev, g)
        touched = int(torch.unique(route[1]).numel())
        base = time_ms(lambda x=x, r=route: moe_experts(x, *bf16, *r))
        prefill = sh.prefill_tokens == T
        for op, fn, ref, weights, bytes_per in (
            ("moe_experts_fp8", moe_experts_fp8, moe_experts_fp8_ref, fp8, 1.0),
            ("moe_experts_nvfp4", moe_experts_nvfp4, moe_experts_nvfp4_ref, nv, 0.5 + 1 / 16),
        ):
            args = (x, *weights, *route)
            err = rel_err(fn(*args), ref(*args))
            ms = time_ms(lambda f=fn, a=args: f(*a))
            if prefill:
                amount, kind = 2 * T * sh.k * 2 * sh.D * sh.I, "TFLOP/s"
            else:
                amount, kind = touched * 2 * sh.D * sh.I * bytes_per, "TB/s"
            rows.append(qrow(op, f"T={T}", ms, amount, kind, err, base, "bf16 moe_experts", copy,
                             experts_touched=touched))  # fmt: skip
        if not prefill:  # the bf16 kernel's own weight rate, for the same table
            amount = touched * 2 * sh.D * sh.I * 2
            rows.append(qrow("moe_experts (bf16)", f"T={T}", base, amount, "TB/s", None, copy=copy))
    return rows


def _pool(sh, lengths, dev, g):
    total = sum(lengths)
    k = torch.randn(total, sh.hkv, sh.head_dim, device=dev, generator=g).to(torch.bfloat16)
    v = torch.randn(total, sh.hkv, sh.head_dim, device=dev, generator=g).to(torch.bfloat16)
    perm = torch.randperm(total, device=dev, generator=g).to(torch.int32)
    req = torch.zeros(len(lengths), max(lengths), device=dev, dtype=torch.int32)
    start = 0
    for b, n in enumerate(lengths):
        req[b, :n] = perm[start : start + n]
        start += n
    ks, vs = fp8_scale(k), fp8_scale(v)
    return (k, v, req), (quantize_fp8(k, ks), quantize_fp8(v, vs), req), (ks, vs)


def bench_attention(sh, dev, copy):
    g = torch.Generator(device=dev).manual_seed(2)
    scale = sh.head_dim**-0.5
    rows = []
    lengths = list(sh.attn_prefill)
    bf16_pool, fp8_pool, scales = _pool(sh, lengths, dev, g)
    B, T = len(lengths), sum(lengths)
    q = torch.randn(T, sh.hq, sh.head_dim, device=dev, generator=g).to(torch.bfloat16)
    cu = torch.zeros(B + 1, device=dev, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, device=dev).cumsum(0)
    meta = (torch.arange(B, device=dev), cu, torch.zeros(B, device=dev, dtype=torch.int32), scale)
    args = (q, *fp8_pool, *meta, *scales)
    err = rel_err(attention_prefill(*args), attention_prefill_ref(*args))
    ms = time_ms(lambda: attention_prefill(*args))
    base = time_ms(lambda: attention_prefill(q, *bf16_pool, *meta))
    flops = sum(2 * sh.hq * sh.head_dim * n * (n + 1) for n in lengths)
    rows.append(qrow("attention_prefill fp8 kv", f"{B}x{lengths[0]}", ms, flops, "TFLOP/s", err,
                     base, "bf16 kv"))  # fmt: skip

    batch, context = sh.attn_decode
    bf16_pool, fp8_pool, scales = _pool(sh, [context] * batch, dev, g)
    q = torch.randn(batch, sh.hq, sh.head_dim, device=dev, generator=g).to(torch.bfloat16)
    meta = (torch.arange(batch, device=dev),
            torch.full((batch,), context, device=dev, dtype=torch.int32), scale)  # fmt: skip
    args = (q, *fp8_pool, *meta, *scales)
    err = rel_err(attention_decode(*args), attention_decode_ref(*args))
    ms = time_ms(lambda: attention_decode(*args))
    base = time_ms(lambda: attention_decode(q, *bf16_pool, *meta))
    amount = 2 * batch * context * sh.hkv * sh.head_dim  # K and V bytes, E4M3
    rows.append(qrow("attention_decode fp8 kv", f"B={batch} L={context}", ms, amount, "TB/s",
                     err, base, "bf16 kv", copy))  # fmt: skip
    return rows


def format_quant_table(rows):
    lines = [
        "| op | shape | ms | achieved | % copy BW | baseline | baseline ms | x baseline | err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = "" if r["pct_of_ceiling"] != r["pct_of_ceiling"] else f"{r['pct_of_ceiling']:.1f}"
        base = "" if r["baseline_ms"] is None else f"{r['baseline_ms']:.3f}"
        vs = "" if r["vs_base"] is None else f"{r['vs_base']:.2f}"
        err = "" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['ms']:.3f} | {r['metric']} | {pct} | "
            f"{r['baseline'] or ''} | {base} | {vs} | {err} |"
        )
    return "\n".join(lines)


def all_rows(small=False, sweep=False):
    sh = SMALL if small else FULL
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    copy = copy_tbs(dev)
    print(f"copy bandwidth (read + write): {copy:.2f} TB/s")
    rows = []
    for bench in (bench_fp8_linear, bench_moe, bench_attention):
        rows += _printed(bench(sh, dev, copy))
    if sweep:
        from benchmarks.kernels_quant_sweep import SWEEPS  # it imports this module

        for run in SWEEPS:
            rows += _printed(run(sh, dev, copy, configs_each=1 if small else None))
    return rows


def _printed(rows):
    """Each suite's rows as soon as they exist (a later failure keeps them in the log)."""
    for r in rows:
        print(json.dumps(r))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU interpreter)")
    parser.add_argument("--sweep", action="store_true", help="also time a few tilings")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = all_rows(args.small, args.sweep)
    if out := os.environ.get("OUT"):
        dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        meta = {"gpu": dev, "torch": torch.__version__, "triton": triton.__version__}
        Path(out, "kernels_quant.json").write_text(
            json.dumps({"meta": meta, "rows": rows}, indent=1)
        )
    print(format_quant_table(rows))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
