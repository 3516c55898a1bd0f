"""NVFP4 W4A16 routed experts: the reference against per-token dequantize-then-fp32 math."""

import torch

from kernels.moe_experts import moe_experts_ref
from kernels.moe_experts_nvfp4 import moe_experts_nvfp4_ref
from kernels.quant_formats import dequant_nvfp4
from tests.kernels.quant_helpers import cosine, nvfp4, randn, rel_err, routing

E, K, D, INNER = 8, 3, 32, 48


def experts(seed):
    up = randn(E, INNER, D, seed=seed, scale=D**-0.5)
    down = randn(E, D, INNER, seed=seed + 1, scale=INNER**-0.5)
    return (up, down), (nvfp4(up), nvfp4(down))


def per_token(x, up_q, down_q, topk_w, ids):
    up = dequant_nvfp4(up_q.packed, up_q.block_scale, up_q.scale_2)
    down = dequant_nvfp4(down_q.packed, down_q.block_scale, down_q.scale_2)
    out = torch.zeros(x.shape)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = torch.relu(up[e] @ x[t].float()).square().to(x.dtype).float()
            out[t] += (down[e] @ h * topk_w[t, j]).to(x.dtype).float()
    return out.to(x.dtype)


def test_weight_shape_and_checks():
    _, (up_q, down_q) = experts(seed=0)
    assert up_q.shape == (E, INNER, D) and down_q.shape == (E, D, INNER)
    whole = dequant_nvfp4(up_q.packed, up_q.block_scale, up_q.scale_2)
    assert torch.equal(up_q.dequant(2), whole[2])


def test_ref_is_per_token_dequantized_math():
    _, q = experts(seed=0)
    topk_w, ids = routing(9, E, K, seed=1, skip_experts=(5,))
    x = randn(9, D, seed=2).to(torch.bfloat16)
    out = moe_experts_nvfp4_ref(x, *q, topk_w, ids)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert rel_err(out, per_token(x, *q, topk_w, ids)) < 1e-2


def test_ref_close_to_unquantized_experts():
    (up, down), q = experts(seed=3)
    topk_w, ids = routing(16, E, K, seed=4)
    x = randn(16, D, seed=5).to(torch.bfloat16)
    bf16 = moe_experts_ref(x.float(), up, down, topk_w, ids)
    assert cosine(moe_experts_nvfp4_ref(x, *q, topk_w, ids), bf16) > 0.98
