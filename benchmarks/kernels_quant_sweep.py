"""`python -m benchmarks.kernels_quant --sweep`: a handful of tilings per quantized kernel at
the sizes that decide the defaults (prefill 16 K tokens; decode 1 / 64 / 128 / 256), each checked
against the default tiling's output, the best printed per size. Rates as in kernels_quant.
"""

from dataclasses import replace

import torch
from triton.runtime.errors import OutOfResources

from benchmarks.common import rel_err
from benchmarks.kernels_quant import (
    _routing,
    moe_fp8_weights,
    moe_nvfp4_weights,
    qrow,
    time_ms,
)
from kernels.fp8_linear import Fp8Config, fp8_linear
from kernels.moe_experts_fp8 import Fp8GemmConfig, moe_experts_fp8
from kernels.moe_experts_nvfp4 import Nvfp4Config, moe_experts_nvfp4
from kernels.quant_formats import fp8_scale, quantize_fp8

# The lists hold each kernel's default beside the variants in question; rows swept and
# dropped in earlier sessions are in benchmarks/RESULTS.md. Session 14: fast accumulation (the
# default since) against promotion into fp32 every BLOCK_K (fast_accum=False), and NVFP4
# decode tiles that read x from shared memory fewer times a weight byte.
# Fp8Config(block_m, block_n, block_k, group_m, warps, stages[, quantize_first, tma, swap_ab,
# fast_accum]); decode rows replace block_m by M rounded up (at least 16).
FP8_LINEAR_PREFILL = [
    Fp8Config(256, 128, 128, 8, 8, 4, quantize_first=True, tma=True),
    Fp8Config(256, 128, 128, 8, 8, 3, quantize_first=True, tma=True),
    Fp8Config(256, 128, 128, 8, 8, 3, quantize_first=True, tma=True, fast_accum=False),
    Fp8Config(128, 256, 128, 8, 8, 3, quantize_first=True, tma=True),
    Fp8Config(128, 128, 128, 8, 8, 4, quantize_first=True, tma=True),
]
FP8_LINEAR_MID = [
    Fp8Config(64, 128, 128, 8, 4, 4, quantize_first=True),
    Fp8Config(64, 128, 128, 8, 4, 4, quantize_first=True, fast_accum=False),
    Fp8Config(128, 128, 128, 8, 8, 4, quantize_first=True, tma=True),
]
FP8_LINEAR_DECODE = [
    Fp8Config(16, 64, 128, 8, 4, 6, quantize_first=True, swap_ab=True),
    Fp8Config(16, 64, 128, 8, 4, 6, quantize_first=True, swap_ab=True, fast_accum=False),
]
# Fp8GemmConfig(block_m, block_n, block_k, group_m, warps, stages, split_tail, tma, fast_accum).
MOE_FP8_PREFILL = [
    Fp8GemmConfig(128, 256, 128, 16, 8, 3, True, True),
    Fp8GemmConfig(128, 256, 128, 16, 8, 4, True, True),
    Fp8GemmConfig(128, 256, 128, 8, 8, 3, True, True),
    Fp8GemmConfig(128, 128, 128, 16, 8, 3, True, True),
    Fp8GemmConfig(128, 128, 128, 16, 8, 4, True, True, False),
]
MOE_FP8_DECODE = [
    Fp8GemmConfig(16, 64, 256, 0, 4, 4),
    Fp8GemmConfig(16, 64, 256, 0, 4, 4, fast_accum=False),
]
# Nvfp4Config(..., split_tail, ptx_dequant, swap_ab).
MOE_NVFP4_PREFILL = [
    Nvfp4Config(256, 128, 128, 8, 8, 3, True, True, True),
    Nvfp4Config(256, 128, 64, 8, 8, 3, True, True, True),
]
MOE_NVFP4_DECODE = [
    Nvfp4Config(16, 128, 64, 0, 4, 4, False, True),
    Nvfp4Config(16, 128, 64, 0, 4, 6, False, True),
    Nvfp4Config(16, 256, 64, 0, 4, 4, False, True),
    Nvfp4Config(16, 128, 64, 0, 2, 6, False, True),
    Nvfp4Config(16, 128, 128, 0, 4, 5, False, True),
    # a deeper K step: 16 block-scale bytes a row a step (8-byte loads; 4 at BLOCK_K 64, where
    # the H100 profile saw 4 of each 32-byte sector used)
    Nvfp4Config(16, 128, 256, 0, 4, 3, False, True),
    Nvfp4Config(16, 64, 256, 0, 4, 4, False, True),
]

def tag(cfg):
    v = list(vars(cfg).values())
    return "x".join(str(x) for x in v[:3]) + " g" + "/".join(str(x) for x in v[3:])


def _best(label, rows):
    best = max(rows, key=lambda r: r["rate"])
    print(f"sweep best {label}: {best['op']} {best['metric']} ({best['ms']:.3f} ms)")
    return rows


def _time_configs(op, shape, fn, configs, amount, kind, copy, configs_each):
    """fn(config) -> output; every config (the first configs_each) checked against config
    None (the default)."""
    ref = fn(None)
    rows = []
    for cfg in configs[:configs_each]:
        try:
            err = rel_err(fn(cfg), ref)
            ms = time_ms(lambda c=cfg: fn(c))
        except OutOfResources as e:  # a tiling too big for shared memory is a result too
            print(f"sweep {op} {shape} [{tag(cfg)}]: {type(e).__name__}: {str(e)[:120]}")
            continue
        rows.append(qrow(f"{op} [{tag(cfg)}]", shape, ms, amount, kind, err, copy=copy))
    return _best(f"{op} {shape}", rows) if rows else rows


def sweep_fp8_linear(sh, dev, copy, configs_each=None):
    g = torch.Generator(device=dev).manual_seed(3)
    big, mid = sh.prefill_tokens, sh.decode_tokens[-1]
    cases = [(name, M, cs) for M, cs in ((big, FP8_LINEAR_PREFILL), (1, FP8_LINEAR_DECODE))
             for name in ("in_proj", "out_proj")]  # fmt: skip
    # Decode batches reach every dense FP8 layer (the NVFP4 checkpoint's too), whose N of
    # 2688-10304 decides how many programs a tile gives: each at 64, 128 and `mid` rows.
    decode = ((64, FP8_LINEAR_DECODE), (128, FP8_LINEAR_MID), (mid, FP8_LINEAR_MID))
    cases += [(name, M, cs) for name in sh.dense for M, cs in decode]
    rows = []
    for name, M, configs in cases:
        N, K = sh.dense[name]
        w = torch.randn(N, K, device=dev, generator=g) * K**-0.5
        ws = fp8_scale(w)
        x = torch.randn(M, K, device=dev, generator=g).to(torch.bfloat16)
        args = (x, quantize_fp8(w, ws), ws, fp8_scale(x))
        if configs is FP8_LINEAR_DECODE:
            block_m = max(16, 1 << (M - 1).bit_length())
            configs = [Fp8Config(block_m, *list(vars(c).values())[1:]) for c in configs]
            amount, kind = N * K, "TB/s"
        else:
            amount, kind = 2 * M * N * K, "TFLOP/s"
        fn = lambda cfg, a=args: fp8_linear(*a, config=cfg)
        rows += _time_configs(
            "fp8_linear", f"{name} M={M}", fn, configs, amount, kind, copy, configs_each
        )
    return rows


def _sweep_moe(op, fn, weights, prefill, decode, bytes_per, sh, dev, copy, configs_each):
    g = torch.Generator(device=dev).manual_seed(4)
    rows = []
    for T in (sh.prefill_tokens, *sh.decode_tokens[-2:]):
        x = torch.randn(T, sh.D, device=dev, generator=g).to(torch.bfloat16)
        route = _routing(sh, T, dev, g)
        run = lambda cfg, a=(x, *weights, *route): fn(*a, config=cfg)
        if sh.prefill_tokens == T:
            configs, amount, kind = prefill, 2 * T * sh.k * 2 * sh.D * sh.I, "TFLOP/s"
        else:
            touched = int(torch.unique(route[1]).numel())
            configs, amount, kind = decode, touched * 2 * sh.D * sh.I * bytes_per, "TB/s"
        rows += _time_configs(op, f"T={T}", run, configs, amount, kind, copy, configs_each)
    return rows


def sweep_moe_fp8(sh, dev, copy, configs_each=None):
    weights = moe_fp8_weights(sh, dev, torch.Generator(device=dev).manual_seed(5))
    return _sweep_moe("moe_experts_fp8", moe_experts_fp8, weights, MOE_FP8_PREFILL,
                      MOE_FP8_DECODE, 1.0, sh, dev, copy, configs_each)  # fmt: skip


def sweep_moe_nvfp4(sh, dev, copy, configs_each=None):
    weights = moe_nvfp4_weights(sh, dev, torch.Generator(device=dev).manual_seed(6))
    prefill, decode = MOE_NVFP4_PREFILL, MOE_NVFP4_DECODE
    if dev.type != "cuda":  # inline PTX needs the GPU
        prefill, decode = ([replace(c, ptx_dequant=False) for c in cs] for cs in (prefill, decode))
    return _sweep_moe("moe_experts_nvfp4", moe_experts_nvfp4, weights, prefill, decode,
                      0.5 + 1 / 16, sh, dev, copy, configs_each)  # fmt: skip


# NVFP4 first: a run cut short by its time limit keeps the rows that decide the most
SWEEPS = [sweep_moe_nvfp4, sweep_moe_fp8, sweep_fp8_linear]
