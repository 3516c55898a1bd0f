"""NVFP4 W4A16 routed experts: the reference against per-token dequantize-then-fp32 math."""

from dataclasses import replace

import pytest
import torch

from kernels.moe_experts import moe_experts_ref
from kernels.moe_experts_nvfp4 import (
    Nvfp4Weight,
    moe_experts_nvfp4,
    moe_experts_nvfp4_ref,
    pick_config,
)
from kernels.quant_formats import dequant_nvfp4
from tests.kernels.moe_attn_helpers import assert_close
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


@pytest.mark.parametrize("swap_ab", [False, True])
@pytest.mark.parametrize("T", [1, 5, 17, 64])
def test_kernel_matches_ref(T, swap_ab):
    _, q = experts(seed=T)
    topk_w, ids = routing(T, E, K, seed=T, skip_experts=(0, 5))
    x = randn(T, D, seed=T + 1).to(torch.bfloat16)
    config = replace(pick_config(T, K, E), swap_ab=swap_ab)
    out = moe_experts_nvfp4(x, *q, topk_w, ids, config=config)
    assert out.dtype == torch.bfloat16
    assert_close(f"T={T}", out, moe_experts_nvfp4_ref(x, *q, topk_w, ids))


def test_kernel_dequantizes_every_code_and_masks_the_k_tail():
    """One expert, identity-like routing: up's output row n is sum_k x_k * w[n, k] with every
    byte value (all 16 codes in both nibbles) across varied block scales; INNER = 48 leaves a
    masked half tile in the down GEMM (BLOCK_K 32 in the interpreter)."""
    g = torch.Generator().manual_seed(9)
    packed = torch.randint(0, 256, (1, INNER, D // 2), generator=g, dtype=torch.uint8)
    packed[0, 0, :16] = torch.arange(0, 256, 16, dtype=torch.uint8) + torch.arange(16)
    block_scale = (torch.rand(1, INNER, D // 16, generator=g) * 3 + 0.01).to(torch.float8_e4m3fn)
    up = Nvfp4Weight(packed, block_scale, torch.tensor([0.37]))
    down = nvfp4(randn(1, D, INNER, seed=10, scale=INNER**-0.5))
    x = randn(6, D, seed=11).to(torch.bfloat16)
    ids = torch.zeros(6, 1, dtype=torch.int32)
    w = torch.ones(6, 1)
    ref = moe_experts_nvfp4_ref(x, up, down, w, ids)
    for swap_ab in (False, True):
        out = moe_experts_nvfp4(
            x, up, down, w, ids, config=replace(pick_config(6, 1, 1), swap_ab=swap_ab)
        )
        assert_close(f"codes swap_ab={swap_ab}", out, ref)
