"""The LLM's dense linear layer, in the format its checkpoint holds (workers/model/quant.py).

Letters: M rows, K in-features, N out-features.

Parameters carry the checkpoint's leaf names, so `…in_proj.weight_scale` loads into
`in_proj.weight_scale`. BF16: `weight` [N, K] in the model dtype. FP8: `weight` E4M3 [N, K],
`weight_scale` and `input_scale` fp32 0-d; the forward quantizes x with the static
`input_scale` inside the W8A8 kernel (ops.fp8_linear), or takes x already in E4M3 from a
producer that quantized it by `fused_input_scale` in its epilogue. NVFP4 holds routed experts
only (moe.ExpertStack): no published checkpoint has a dense NVFP4 layer.
Quantized tensors are frozen Parameters, so whatever sums a model's parameters counts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from kernels.fp8_linear import tilings
from kernels.quant_formats import dequant_fp8, fp8_scale, quantize_fp8
from workers.model import ops
from workers.model.quant import BF16, FP8

_FUSED_INPUTS: ContextVar[bool] = ContextVar("omnibatch_fused_fp8_inputs", default=True)


@contextmanager
def inputs_unfused() -> Iterator[None]:
    """Inside this block producers hand FP8 layers their input unquantized (calibration
    measures it before the layer's input_scale exists)."""
    token = _FUSED_INPUTS.set(False)
    try:
        yield
    finally:
        _FUSED_INPUTS.reset(token)


def frozen(shape: tuple[int, ...], dtype: torch.dtype, device) -> nn.Parameter:
    """An uninitialised Parameter that is never trained (fp8 and uint8 cannot be)."""
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class Linear(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, fmt: str = BF16, device=None, dtype=None
    ):
        super().__init__()
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        shape = (out_features, in_features)
        if fmt == BF16:
            self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        elif fmt == FP8:
            self.weight = frozen(shape, torch.float8_e4m3fn, device)
            self.weight_scale = frozen((), torch.float32, device)
            self.input_scale = frozen((), torch.float32, device)
        else:
            raise ValueError(f"no dense {fmt} linear: only routed experts are published in {fmt}")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt}"

    def forward(self, x: torch.Tensor, relu2_out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] -> [M, N] in x's dtype (bf16 for E4M3 x); FP8 only: with relu2_out_scale
        relu(y)² quantized to E4M3 by it (ops.fp8_linear's epilogue)."""
        if self.fmt == FP8:
            return ops.fp8_linear(
                x, self.weight, self.weight_scale, self.input_scale, relu2_out_scale
            )
        assert relu2_out_scale is None, "the relu² epilogue is FP8's"
        return F.linear(x, self.weight)

    def fused_input_scale(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The scale by which the producer of this layer's input, in `dtype`, may hand it over
        quantized to E4M3 (see ops.rmsnorm's out_scale), else None. Only FP8 layers of a bf16
        model (an E4M3 input gives bf16 outputs), and not inside `inputs_unfused`."""
        if self.fmt == FP8 and dtype == torch.bfloat16 and _FUSED_INPUTS.get():
            return self.input_scale
        return None

    @torch.no_grad()
    def set_weight(self, w: torch.Tensor) -> None:
        """Store a high-precision weight [N, K] in this layer's format (quantize at load). An
        FP8 layer's input_scale is left to calibration (workers/model/calibrate.py)."""
        if w.shape != self.weight.shape:
            raise ValueError(f"shape {tuple(w.shape)}, expected {tuple(self.weight.shape)}")
        if self.fmt == FP8:
            w = w.to(self.weight.device)
            scale = fp8_scale(w)
            self.weight.copy_(quantize_fp8(w, scale))
            self.weight_scale.copy_(scale)
        else:
            self.weight.copy_(w)

    @torch.no_grad()
    def dequantized(self) -> torch.Tensor:
        """The weight the quantized one stands for, [N, K] fp32 (the weight itself if BF16)."""
        if self.fmt == FP8:
            return dequant_fp8(self.weight, self.weight_scale)
        return self.weight.float()


def warm_sizes(model: nn.Module, max_rows: int) -> list[int]:
    """Token counts (≤ max_rows) whose forwards, together, run every tiling ops.fp8_linear
    picks for the model's FP8 layers on its GPU: Triton compiles a tiling on first use (1-2 s
    on the engine thread, inside the first jobs: RESULTS.md session 20). [] without FP8 layers
    or off the GPU."""
    layers = [m for m in model.modules() if isinstance(m, Linear) and m.fmt == FP8]
    if not layers or layers[0].weight.device.type != "cuda":
        return []
    props = torch.cuda.get_device_properties(layers[0].weight.device)
    sms, hopper = props.multi_processor_count, props.major >= 9
    sizes = set()
    for n in {m.out_features for m in layers}:
        sizes.update(tilings(max_rows, n, sms, hopper).values())
    return sorted(sizes)
