"""moe_align and moe_experts (Triton, interpreted) against the references and transformers."""

import pytest
import torch
from transformers import NemotronHConfig
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHExperts

from kernels.moe_align import ONE_PROGRAM_MAX_A, moe_align, moe_align_ref
from kernels.moe_experts import moe_experts, moe_experts_ref
from tests.kernels.moe_attn_helpers import assert_close

E, K, D, INNER = 8, 3, 32, 24


def routing(T, seed, skip_experts=()):
    """Distinct experts per token, never any of skip_experts; random combine weights."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in skip_experts])
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:K]] for _ in range(T)])
    return torch.rand(T, K, generator=g) * 2.5 / K, ids.to(torch.int32)


def weights(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(E, INNER, D, generator=g) / D**0.5
    down = torch.randn(E, D, INNER, generator=g) / INNER**0.5
    return up.to(dtype), down.to(dtype)


def test_align_sizes_take_both_paths():
    assert 64 * K <= ONE_PROGRAM_MAX_A < 1400 * K  # one program / the three kernels


@pytest.mark.parametrize("T", [1, 5, 17, 64, 1400])
def test_align_groups_by_expert(T):
    _, ids = routing(T, seed=T, skip_experts=(2,))
    M = 16
    sorted_ids, block_expert, offsets = moe_align(ids, E, M)
    ref_sorted, ref_blocks, ref_offsets = moe_align_ref(ids, E, M)
    assert torch.equal(offsets, ref_offsets)
    assert torch.equal(block_expert, ref_blocks)
    total = int(offsets[-1])
    assert total % M == 0 and offsets[3] == offsets[2]  # expert 2 got nothing
    flat = ids.view(-1)
    for e in range(E):
        rows = sorted_ids[offsets[e] : offsets[e + 1]].long()
        real = rows[rows < T * K]
        # The same set as the reference (order inside an expert is free), all of expert e.
        assert torch.equal(
            real.sort().values, ref_sorted[offsets[e] : offsets[e + 1]].long()[: len(real)]
        )
        assert (flat[real] == e).all()
        assert len(real) == int((flat == e).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 5, 17, 64])
def test_experts_match_ref(T, dtype):
    topk_w, ids = routing(T, seed=T, skip_experts=(0, 5))
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(T)).to(dtype)
    up, down = weights(dtype)
    out = moe_experts(x, up, down, topk_w, ids)
    assert out.dtype == dtype
    assert_close(f"T={T}", out, moe_experts_ref(x, up, down, topk_w, ids))


def test_ref_matches_transformers_experts():
    cfg = NemotronHConfig(
        hidden_size=D, n_routed_experts=E, num_experts_per_tok=K, moe_intermediate_size=INNER,
        mlp_hidden_act="relu2",
    )  # fmt: skip
    hf = NemotronHExperts(cfg)
    up, down = weights(torch.float32)
    with torch.no_grad():
        hf.up_proj.copy_(up)
        hf.down_proj.copy_(down)
    topk_w, ids = routing(13, seed=3)
    x = torch.randn(13, D)
    want = hf(x, ids.long(), topk_w)
    assert_close("ref vs transformers", moe_experts_ref(x, up, down, topk_w, ids), want)
    assert_close("triton vs transformers", moe_experts(x, up, down, topk_w, ids), want)


def test_packed_equals_per_token():
    """Each token's output depends only on its own row: batching must not mix tokens."""
    T = 7
    topk_w, ids = routing(T, seed=11)
    x = torch.randn(T, D)
    up, down = weights(torch.float32, seed=1)
    packed = moe_experts(x, up, down, topk_w, ids)
    for t in range(T):
        one = moe_experts(x[t : t + 1], up, down, topk_w[t : t + 1], ids[t : t + 1])
        assert_close(f"token {t}", one, packed[t : t + 1])
