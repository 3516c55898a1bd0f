"""All kernel benchmarks in one run: Mamba-2 / norms, MoE / attention, quantized kernels.

    python -m benchmarks.kernels            # every suite
    python -m benchmarks.kernels moe_attn   # only the named suites (mamba, moe_attn, quant)

The quant suite's "% of ceiling" is % of the copy bandwidth measured in the same run (weight
streaming rows); its own table (python -m benchmarks.kernels_quant) shows the baselines.

Prints one table last; with OUT set, writes every row to $OUT/kernels.json.
"""

import json
import os
import sys
from pathlib import Path

import torch

from benchmarks import kernels_mamba, kernels_moe_attn, kernels_quant
from benchmarks.common import format_table

SUITES = {
    "mamba": kernels_mamba.all_rows,
    "moe_attn": kernels_moe_attn.all_rows,
    "quant": kernels_quant.all_rows,
}


def main(names):
    unknown = set(names) - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suites {sorted(unknown)}; choose from {sorted(SUITES)}")
    rows = []
    for name in names or SUITES:
        rows += SUITES[name]()
    if out := os.environ.get("OUT"):
        meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
        Path(out, "kernels.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(format_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
