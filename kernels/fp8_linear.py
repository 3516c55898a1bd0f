"""Dense FP8 W8A8 linear layer with static per-tensor scales (ModelOpt FP8 checkpoints).

Letters: M tokens, K in-features, N out-features.

y = (quantize_fp8(x, input_scale) @ weight^T) * (weight_scale * input_scale), where weight is
E4M3 [N, K] (nn.Linear layout) and both scales are fp32 0-d tensors from the checkpoint.
"""

from kernels.quant_formats import quantize_fp8


def fp8_linear_ref(x, weight, weight_scale, input_scale):
    """Plain PyTorch twin of `fp8_linear`: x [M, K] bf16, weight [N, K] e4m3,
    weight_scale / input_scale fp32 0-d. Returns [M, N] in x's dtype (fp32 math)."""
    xq = quantize_fp8(x, input_scale).float()
    y = xq @ weight.float().t() * (weight_scale.float() * input_scale.float())
    return y.to(x.dtype)
