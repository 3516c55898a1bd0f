"""FP8 W8A8 routed experts: the reference against per-token dequantize-then-fp32 math."""

import pytest
import torch

from kernels.moe_experts import moe_experts_ref
from kernels.moe_experts_fp8 import Fp8GemmConfig, moe_experts_fp8, moe_experts_fp8_ref
from kernels.quant_formats import dequant_fp8, fp8_scale, quantize_fp8
from tests.kernels.moe_attn_helpers import assert_close
from tests.kernels.quant_helpers import cosine, fp8_per_expert, randn, rel_err, routing

E, K, D, INNER = 8, 3, 32, 24


def experts(seed, inner=INNER):
    """Unquantized weights and the FP8 checkpoint's tensors of them (up, down, scales, input
    scales from a calibration batch: the max over experts, as the loader takes it)."""
    up = randn(E, inner, D, seed=seed, scale=D**-0.5)
    down = randn(E, D, inner, seed=seed + 1, scale=inner**-0.5)
    (up_q, up_s), (down_q, down_s) = fp8_per_expert(up), fp8_per_expert(down)
    calib = randn(64, D, seed=seed + 2)
    x_s = fp8_scale(calib)
    h_s = torch.stack([fp8_scale(torch.relu(calib @ up[e].t()).square()) for e in range(E)]).max()
    return (up, down), (up_q, down_q, up_s, down_s, x_s, h_s)


def per_token(x, up_q, down_q, up_s, down_s, x_s, h_s, topk_w, ids):
    """out[t] = sum_j w_tj * down(q(relu(up(q(x_t)))^2)), token by token, weights dequantized."""
    up, down = dequant_fp8(up_q, up_s), dequant_fp8(down_q, down_s)
    xq = dequant_fp8(quantize_fp8(x, x_s), x_s)
    out = torch.zeros(x.shape)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = torch.relu(up[e] @ xq[t]).square()
            y = down[e] @ dequant_fp8(quantize_fp8(h, h_s), h_s) * topk_w[t, j]
            out[t] += y.to(x.dtype).float()
    return out.to(x.dtype)


def test_ref_is_per_token_dequantized_math():
    _, q = experts(seed=0)
    topk_w, ids = routing(9, E, K, seed=1, skip_experts=(3,))
    x = randn(9, D, seed=2).to(torch.bfloat16)
    out = moe_experts_fp8_ref(x, *q, topk_w, ids)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert rel_err(out, per_token(x, *q, topk_w, ids)) < 1e-2


def test_ref_close_to_unquantized_experts():
    (up, down), q = experts(seed=3)
    topk_w, ids = routing(16, E, K, seed=4)
    x = randn(16, D, seed=5).to(torch.bfloat16)
    bf16 = moe_experts_ref(x.float(), up, down, topk_w, ids)
    assert cosine(moe_experts_fp8_ref(x, *q, topk_w, ids), bf16) > 0.99


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("T", [1, 5, 17, 64])
def test_kernel_matches_ref(T, tma):
    """TMA: an inner size of 48 (a descriptor's rows must be 16-byte multiples) in 32-wide
    tiles: up's second column block reads 16 rows past its expert's (the next expert's, or
    zeros after the last), down's last K tile 16 columns past K (zeros); h goes through a
    descriptor too."""
    _, q = experts(seed=T, inner=48 if tma else INNER)
    topk_w, ids = routing(T, E, K, seed=T, skip_experts=(0, 5))
    x = randn(T, D, seed=T + 1).to(torch.bfloat16)
    cfg = Fp8GemmConfig(16, 32, 32, 4, 4, 1, tma=True) if tma else None
    out = moe_experts_fp8(x, *q, topk_w, ids, config=cfg)
    assert out.dtype == torch.bfloat16
    assert_close(f"T={T}", out, moe_experts_fp8_ref(x, *q, topk_w, ids))


def test_kernel_packed_equals_per_token():
    """Each token's output depends only on its own row: batching must not mix tokens."""
    T = 4
    _, q = experts(seed=11)
    topk_w, ids = routing(T, E, K, seed=11)
    x = randn(T, D, seed=12).to(torch.bfloat16)
    packed = moe_experts_fp8(x, *q, topk_w, ids)
    for t in range(T):
        one = moe_experts_fp8(x[t : t + 1], *q, topk_w[t : t + 1], ids[t : t + 1])
        assert torch.equal(one, packed[t : t + 1]), t
