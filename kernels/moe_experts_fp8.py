"""Routed MoE experts of the FP8 checkpoint (W8A8, static per-tensor scales).

Letters: T tokens, D hidden, I expert inner size, E experts, k experts per token.

out[t] = sum_j w_j * down_e(relu(up_e(x_t))^2) as in kernels/moe_experts.py, with
  x quantized by up_input_scale (one per MoE: the loader takes the max over experts),
  up_e = up[e] * up_scale[e], h = relu(.)^2 quantized by down_input_scale, down_e likewise.
"""

import torch

from kernels.quant_formats import quantize_fp8


def moe_experts_fp8_ref(
    x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights, topk_ids
):
    """Plain PyTorch twin of `moe_experts_fp8`: a loop over the experts that got tokens.

    x [T, D] bf16; up [E, I, D] e4m3; down [E, D, I] e4m3; up_scale, down_scale [E] fp32;
    up_input_scale, down_input_scale fp32 0-d; topk_weights [T, k] fp32; topk_ids [T, k] int32.
    Returns [T, D] in x's dtype; each assignment's output is rounded to x's dtype before the
    sum over k, as the kernel stores it.
    """
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    xq = quantize_fp8(x, up_input_scale).float()
    flat_ids = topk_ids.reshape(-1).long()
    for e in torch.unique(flat_ids).tolist():
        assign = (flat_ids == e).nonzero().squeeze(1)  # [n] indices into T*k
        tokens = assign // topk_ids.shape[1]
        h = xq[tokens] @ up[e].float().t() * (up_scale[e] * up_input_scale)
        hq = quantize_fp8(torch.relu(h).square(), down_input_scale).float()
        y = hq @ down[e].float().t() * (down_scale[e] * down_input_scale)
        y = y * topk_weights.reshape(-1)[assign, None]
        out.index_add_(0, tokens, y.to(x.dtype).float())
    return out.to(x.dtype)
