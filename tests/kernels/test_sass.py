"""benchmarks/sass.py: tilings compiled for sm_90 here (no GPU), their K loops counted.

Compiling needs the real @triton.jit functions, so each count runs in a Python process
without the interpreter switch that tests/conftest.py sets in this one.
"""

import json
import os
import subprocess
import sys

COUNT = """
import json, sys, tempfile
from dataclasses import replace
from pathlib import Path
from benchmarks import sass
from kernels.attention import _DECODE_CFG as ATTN_DECODE
from kernels.fp8_linear import Fp8Config
from kernels.moe_experts_fp8 import _PREFILL as FP8_MOE
from kernels.moe_experts_nvfp4 import _DECODE, _PREFILL

plain = Fp8Config(16, 64, 256, 8, 4, 4, quantize_first=True)
cases = {
    "fp8 plain": (plain, sass.fp8_linear_kernel(plain)),
    "fp8 swapped": (replace(plain, swap_ab=True),
                    sass.fp8_linear_kernel(replace(plain, swap_ab=True))),
    "fp8 moe": (FP8_MOE, sass.moe_fp8_kernel(FP8_MOE)),
    "nvfp4 swapped": (_PREFILL, sass.nvfp4_kernel(_PREFILL)),
    "nvfp4 plain": (replace(_PREFILL, swap_ab=False),
                    sass.nvfp4_kernel(replace(_PREFILL, swap_ab=False))),
    "nvfp4 decode": (_DECODE, sass.nvfp4_kernel(_DECODE)),
}
cases = {name: (cfg.num_warps, cfg.num_stages, k) for name, (cfg, k) in cases.items()}
_, warps, stages = ATTN_DECODE
cases["attention fp8"] = (warps, stages, sass.attention_decode_kernel("fp8e4nv"))
out = {}
for name, (warps, stages, (fn, sig, consts)) in cases.items():
    compiled = sass.compile_sm90(fn, sig, consts, warps, stages)
    regs, stack, ops = sass.loop_counts(compiled.asm["cubin"], Path(tempfile.mkdtemp()))
    out[name] = {"regs": regs, "stack": stack, "ops": dict(ops)}
print(json.dumps(out))
"""


def test_loop_counts_of_the_swapped_tilings():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COUNT], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    c = json.loads(run.stdout.splitlines()[-1])
    # 16-row tiles: the plain product upcasts the FP8 weights to fp16 for mma.sync (F2FP,
    # HMMA); swapped, FP8 wgmma (QGMMA) takes them as loaded, in fewer instructions.
    plain, swapped = c["fp8 plain"]["ops"], c["fp8 swapped"]["ops"]
    assert plain.get("F2FP", 0) > 0 and plain.get("HMMA", 0) > 0 and "QGMMA" not in plain
    assert swapped.get("QGMMA", 0) > 0 and "F2FP" not in swapped
    assert sum(swapped.values()) < sum(plain.values())
    assert all(0 < r["regs"] <= 255 for r in c.values())
    assert c["fp8 plain"]["stack"] == c["fp8 swapped"]["stack"] == 0
    # the FP8 MoE prefill tile: FP8 wgmma, no local-memory traffic in its K loop (its 128 x 256
    # accumulator spills a few registers around the loop only)
    moe = c["fp8 moe"]["ops"]
    assert moe.get("QGMMA", 0) > 0 and "LDL" not in moe and "STL" not in moe
    # NVFP4 prefill: plain, the dequantized weight tile goes through shared memory (STS) to
    # wgmma each K step; swapped, wgmma takes it from registers
    plain, swapped = c["nvfp4 plain"]["ops"], c["nvfp4 swapped"]["ops"]
    assert plain.get("STS", 0) > 0 and plain.get("HGMMA", 0) > 0
    assert "STS" not in swapped and swapped.get("HGMMA", 0) > 0
    # NVFP4 decode tile (16 x 128 x 64): a row's 32 weight bytes in two 16-byte copies, x and
    # the block scales one each, 4 cp.async a K step (6 with the 8-byte weight copies of
    # session 13, 1.19 against 1.46 TB/s on the H100 with the padding rows' x unloaded too)
    assert c["nvfp4 decode"]["ops"].get("LDGSTS", 0) == 4
    # one prmt a weight byte (32 a thread a K step) builds both codes' bf16 pair: no permutes
    # interleaving separate low- and high-nibble registers (48 in session 16)
    assert c["nvfp4 decode"]["ops"].get("PRMT", 0) == 32
    # attention over an E4M3 pool: E4M3 -> fp16 pairs (F2FP) for fp16 MMAs, no per-element
    # fp16 -> bf16 converts (F2F; 128 a K step with bf16 MMAs)
    attn = c["attention fp8"]["ops"]
    assert attn.get("F2FP", 0) > 0 and attn.get("HMMA", 0) > 0 and "F2F" not in attn
