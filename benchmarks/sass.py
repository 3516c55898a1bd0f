"""`python -m benchmarks.sass`: the K loop of each quantized kernel tiling (and of the decode
attention kernel over bf16 and E4M3 pools), compiled for sm_90 on any machine, counted by
instruction.

No GPU is needed: Triton compiles the kernel for a Hopper target with its bundled ptxas, and
its bundled nvdisasm prints the SASS. The K loop is the innermost loop with an MMA. Printed per
tiling: registers a thread, stack bytes (spills), shared memory, the loop's instructions a
thread per K step and the most frequent opcodes. Static counts, not speed: they say what a
tiling asks of the multiprocessor (an issue slot each), the sweep on the GPU
(`kernels_quant --sweep`) says what it costs.

    python -m benchmarks.sass              # every tiling of the kernels_quant sweep lists
    python -m benchmarks.sass --default    # only each kernel's default tilings
"""

import argparse
import collections
import re
import subprocess
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks import kernels_quant_sweep as sweep
from kernels import attention, fp8_linear, moe_experts_fp8, moe_experts_nvfp4

HOPPER = GPUTarget("cuda", 90, 32)
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# What the launcher's arguments are specialised to on the GPU: 16-byte aligned pointers,
# strides and sizes that are multiples of 16 (the checkpoint's are).
_ATTN_DECODE_STRIDES = ("stride_qb", "stride_qh", "stride_kr", "stride_kh", "stride_vr",
                        "stride_vh", "stride_ob", "stride_oh", "stride_req")  # fmt: skip
_ALIGNED = {"N", "K", "n_end", "stride_xm", "stride_wn", "stride_ym", "stride_am", "stride_we",
            "stride_se", "stride_sn", "stride_cm", *_ATTN_DECODE_STRIDES}  # fmt: skip


def compile_sm90(fn, signature, constexprs, num_warps, num_stages):
    """Compile a @triton.jit function for sm_90. signature: {arg: Triton type}, constexprs:
    {arg: value}. Returns the compiled kernel (asm["cubin"], metadata.shared)."""
    sig = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]]
             for n, t in sig.items() if t.startswith("*") or n in _ALIGNED}  # fmt: skip
    consts = {(names.index(n),): v for n, v in constexprs.items()}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=HOPPER, options=options)


def loop_counts(cubin: bytes, workdir: Path):
    """(registers, stack bytes, Counter of the K loop's opcodes) of a one-kernel cubin."""
    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    usage = subprocess.run([_BIN / "cuobjdump", "--dump-resource-usage", path],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    sass = subprocess.run([_BIN / "nvdisasm", "-c", path], capture_output=True, text=True,
                          check=True).stdout.splitlines()  # fmt: skip
    labels = {line[:-1]: i for i, line in enumerate(sass) if re.match(r"^\.L_x_\d+:$", line)}
    loops = []  # (label line, branch line) of each backward branch
    for i, line in enumerate(sass):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            loops.append((labels[m.group(1)], i))
    # the K loop: the innermost loop with the MMA in it
    with_mma = [(a, b) for a, b in loops if any(re.search(r"\b[HQ]G?MMA\b", x) for x in sass[a:b])]
    start, end = min(with_mma, key=lambda span: span[1] - span[0])
    ops = collections.Counter()
    for line in sass[start : end + 1]:
        if m := re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line):
            ops[m.group(1)] += 1
    return regs, stack, ops


def nvfp4_kernel(cfg, up=True):
    """(fn, signature, constexprs) of the NVFP4 MoE GEMM under Nvfp4Config cfg."""
    sig = {"a_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*fp8e4nv", "s2_ptr": "*fp32",
           "c_ptr": "*bf16", "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32",
           "topk_w_ptr": "*fp32"}  # fmt: skip
    sig |= dict.fromkeys(["num_valid", "n_start", "n_end", "K", "num_blocks_m", "stride_am",
                          "stride_we", "stride_wn", "stride_se", "stride_sn", "stride_cm",
                          "group_m"], "i32")  # fmt: skip
    consts = {"TOP_K": 6, "UP": up, "INTERPRET": False, "PTX": cfg.ptx_dequant, "EVEN_K": True,
              "SWAP_AB": cfg.swap_ab, "BLOCK_M": cfg.block_m,
              "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}  # fmt: skip
    return moe_experts_nvfp4._moe_nvfp4_gemm_kernel, sig, consts


def moe_fp8_kernel(cfg):
    """(fn, signature, constexprs) of the FP8 MoE up GEMM (x rows gathered by token) under
    Fp8GemmConfig cfg."""
    w_arg = f"tensordesc<fp8e4nv[{cfg.block_n}, {cfg.block_k}]>" if cfg.tma else "*fp8e4nv"
    sig = {"a_ptr": "*fp8e4nv", "w_ptr": w_arg, "c_ptr": "*fp8e4nv", "sorted_ids_ptr": "*i32",
           "block_expert_ptr": "*i32", "topk_w_ptr": "*fp32", "w_scale_ptr": "*fp32",
           "a_scale_ptr": "*fp32", "c_scale_ptr": "*fp32"}  # fmt: skip
    ints = ["num_valid", "n_start", "n_end", "N", "K", "num_blocks_m", "stride_am", "stride_we",
            "stride_wn", "stride_cm", "group_m"]  # fmt: skip
    sig |= dict.fromkeys(ints, "i32")
    consts = {"TOP_K": 6, "UP": True, "TMA": cfg.tma, "INTERPRET": False, "EVEN_K": True,
              "FAST_ACCUM": cfg.fast_accum, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
              "BLOCK_K": cfg.block_k}  # fmt: skip
    return moe_experts_fp8._moe_fp8_gemm_kernel, sig, consts


def fp8_linear_kernel(cfg):
    """(fn, signature, constexprs) of fp8_linear under Fp8Config cfg (x in E4M3 when the
    config quantizes it first, else bf16 quantized in the A load)."""
    x = "fp8e4nv" if cfg.quantize_first else "bf16"
    if cfg.tma:
        x_arg = f"tensordesc<{x}[{cfg.block_m}, {cfg.block_k}]>"
        w_arg = f"tensordesc<fp8e4nv[{cfg.block_n}, {cfg.block_k}]>"
    else:
        x_arg, w_arg = f"*{x}", "*fp8e4nv"
    sig = {"x_ptr": x_arg, "w_ptr": w_arg, "y_ptr": "*bf16", "w_scale_ptr": "*fp32",
           "x_scale_ptr": "*fp32"}  # fmt: skip
    sig |= dict.fromkeys(["M", "N", "K", "stride_xm", "stride_wn", "stride_ym"], "i32")
    consts = {"QUANT_A": not cfg.quantize_first, "TMA": cfg.tma, "INTERPRET": False,
              "EVEN_K": True, "SWAP_AB": cfg.swap_ab, "FAST_ACCUM": cfg.fast_accum,
              "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
              "GROUP_M": cfg.group_m}  # fmt: skip
    return fp8_linear._fp8_linear_kernel, sig, consts


def attention_decode_kernel(pool):
    """(fn, signature, constexprs) of the decode attention kernel over a `pool` ("bf16" or
    "fp8e4nv") KV pool: the model's 16 query heads a KV head, head dim 128, two splits."""
    sig = {"q_ptr": "*bf16", "k_ptr": f"*{pool}", "v_ptr": f"*{pool}", "o_ptr": "*bf16",
           "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "req_ptr": "*i32",
           "slots_ptr": "*i64", "seq_lens_ptr": "*i32", "k_scale_ptr": "*fp32",
           "v_scale_ptr": "*fp32", "qk_scale": "fp32"}  # fmt: skip
    sig |= dict.fromkeys(_ATTN_DECODE_STRIDES, "i32")
    block_n = attention._DECODE_CFG[0]
    consts = {"GROUP": 16, "GROUP_PAD": 16, "HEAD_DIM": 128, "BLOCK_N": block_n,
              "NUM_SPLITS": 2, "UPCAST": False, "SCALED": pool != "bf16"}  # fmt: skip
    return attention._attn_decode_kernel, sig, consts


def tilings(default_only):
    """(label, tiling tag, num_warps, num_stages, (fn, signature, constexprs)) of every tiling
    to count."""
    nvfp4 = [moe_experts_nvfp4._PREFILL, moe_experts_nvfp4._DECODE]
    moe_fp8 = [moe_experts_fp8._PREFILL, moe_experts_fp8._DECODE]
    # fp8_linear's defaults for in_proj (N = 10304) on an H100 (132 multiprocessors)
    fp8 = [fp8_linear.tiling(M, 10304, sms=132, hopper=True) for M in (1, 64, 256, 16384)]
    if not default_only:
        nvfp4 += sweep.MOE_NVFP4_PREFILL + sweep.MOE_NVFP4_DECODE
        moe_fp8 += sweep.MOE_FP8_PREFILL + sweep.MOE_FP8_DECODE
        fp8 += sweep.FP8_LINEAR_PREFILL + sweep.FP8_LINEAR_MID + sweep.FP8_LINEAR_DECODE
    for label, cfgs, kernel in (("moe_experts_nvfp4 up", nvfp4, nvfp4_kernel),
                                ("moe_experts_fp8 up", moe_fp8, moe_fp8_kernel),
                                ("fp8_linear", fp8, fp8_linear_kernel)):  # fmt: skip
        for cfg in dict.fromkeys(cfgs):
            yield label, sweep.tag(cfg), cfg.num_warps, cfg.num_stages, kernel(cfg)
    block_n, warps, stages = attention._DECODE_CFG
    for pool in ("bf16", "fp8e4nv"):
        tag = f"BLOCK_N {block_n} g{warps}/{stages}"
        yield f"attention_decode, {pool} pool", tag, warps, stages, attention_decode_kernel(pool)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default", action="store_true", help="only the default tilings")
    ap.add_argument("--workdir", type=Path, default=Path(".cache") / "sass")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("| kernel | tiling | regs | stack B | shared KiB | loop instr | top opcodes |")
    print("|---|---|---|---|---|---|---|")
    for label, tag, warps, stages, (fn, sig, consts) in tilings(args.default):
        compiled = compile_sm90(fn, sig, consts, warps, stages)
        regs, stack, ops = loop_counts(compiled.asm["cubin"], args.workdir)
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
        kib = compiled.metadata.shared / 1024
        row = f"| {label} | {tag} | {regs} | {stack} | {kib:.0f} | {sum(ops.values())}"
        print(f"{row} | {top} |", flush=True)


if __name__ == "__main__":
    main()
