"""Which format each linear layer of the LLM holds: the quantization plan (docs/model.md §6.4).

Formats are the checkpoint's: BF16 (unquantized; held in the model dtype, fp32 on the CPU),
FP8 (ModelOpt per-tensor W8A8: E4M3 weight, fp32 `weight_scale`, static fp32 `input_scale`) and
NVFP4 (packed E2M1 weight, E4M3 scale per 16 values, fp32 `weight_scale_2`; run W4A16 on
Hopper). A `QuantPlan` names the quantized modules by our module name under `llm.`
(`layers.{i}.mixer.in_proj`, `layers.{i}.mixer.experts`, ...); the model's constructors read
it, the loader derives it from a checkpoint's tensors, and `QuantPlan.recipe` gives the layout
NVIDIA publishes, which `--quantize` and the full-size random model reproduce.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from workers.model.config import LLMConfig

BF16, FP8, NVFP4 = "bf16", "fp8", "nvfp4"
PRECISIONS = (BF16, FP8, NVFP4)

# The quantizable linears of each block kind, by name under `layers.{i}.mixer.`. The routed
# experts are one module: their stacked kernels take every expert in one format.
LINEARS = {
    "M": ("in_proj", "out_proj"),
    "*": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "E": ("experts", "shared_experts.up_proj", "shared_experts.down_proj"),
}

# The published checkpoints (low-memory research note §1; CARD8). FP8: every linear of the
# LLM except router and lm_head. NVFP4: routed experts NVFP4; Mamba in/out_proj, shared
# experts and o_proj FP8; q/k/v BF16. Both: FP8 KV cache; encoders and projectors BF16.
RECIPES: dict[str, dict[str, str]] = {
    FP8: {name: FP8 for names in LINEARS.values() for name in names},
    NVFP4: {
        "experts": NVFP4,
        "shared_experts.up_proj": FP8,
        "shared_experts.down_proj": FP8,
        "in_proj": FP8,
        "out_proj": FP8,
        "o_proj": FP8,
    },
}


def linear_modules(config: LLMConfig) -> list[str]:
    """Every quantizable module of the LLM, by our name under `llm.`."""
    return [
        f"layers.{i}.mixer.{name}"
        for i, kind in enumerate(config.pattern)
        for name in LINEARS.get(kind, ())
    ]


@dataclass(frozen=True)
class QuantPlan:
    """The format of every quantized LLM module (absent: BF16) and whether the KV cache is
    FP8 (then each attention layer holds `k_proj.k_scale` and `v_proj.v_scale`)."""

    formats: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    kv_fp8: bool = False

    def __post_init__(self):
        bad = {m: f for m, f in self.formats.items() if f not in (FP8, NVFP4)}
        if bad:
            raise ValueError(f"unknown formats in the quantization plan: {bad}")
        object.__setattr__(self, "formats", MappingProxyType(dict(self.formats)))

    def format(self, module: str) -> str:
        return self.formats.get(module, BF16)

    @property
    def precision(self) -> str:
        """nvfp4 when any module is NVFP4, else fp8 when any is FP8, else bf16."""
        used = set(self.formats.values())
        return NVFP4 if NVFP4 in used else FP8 if FP8 in used else BF16

    @classmethod
    def recipe(cls, config: LLMConfig, precision: str) -> QuantPlan:
        """The layout of NVIDIA's published checkpoint of that precision."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == BF16:
            return cls()
        table = RECIPES[precision]
        formats = {
            m: table[m.split(".mixer.", 1)[1]]
            for m in linear_modules(config)
            if m.split(".mixer.", 1)[1] in table
        }
        return cls(formats, kv_fp8=True)
