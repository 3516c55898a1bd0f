"""moe_route (Triton, interpreted) and moe_route_ref against transformers' NemotronH router."""

import pytest
import torch
from transformers import NemotronHConfig
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHTopkRouter

from kernels.moe_routing import PARTS_MAX_T, moe_route, moe_route_ref
from tests.kernels.moe_attn_helpers import assert_close

E, K, D, SCALE = 8, 3, 32, 2.5


def hf_router(gate_weight, bias):
    cfg = NemotronHConfig(
        hidden_size=D,
        n_routed_experts=E,
        num_experts_per_tok=K,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=SCALE,
    )
    router = NemotronHTopkRouter(cfg)
    with torch.no_grad():
        router.weight.copy_(gate_weight.float())
        router.e_score_correction_bias.copy_(bias)
    return router


def by_expert(weights, ids):
    """Sort each token's (id, weight) pairs by id: the order within top-k is unspecified."""
    ids, order = ids.long().sort(dim=-1)
    return weights.gather(1, order), ids


# (hidden, gate weight) dtypes; the model runs bf16 hidden states against an fp32 gate.
DTYPES = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize("dtypes", DTYPES, ids=["fp32", "bf16", "bf16-fp32gate"])
@pytest.mark.parametrize("T", [1, 5, 17, 64])
def test_route_matches_transformers(T, dtypes):
    g = torch.Generator().manual_seed(T)
    hidden = torch.randn(T, D, generator=g).to(dtypes[0])
    gate = (0.3 * torch.randn(E, D, generator=g)).to(dtypes[1])
    # A bias large enough to change selections: chosen by biased score, weighted unbiased.
    bias = 0.5 * torch.randn(E, generator=g)
    _, hf_w, hf_ids = hf_router(gate, bias)(hidden)
    want_w, want_ids = by_expert(hf_w, hf_ids)
    for name, fn in [("triton", moe_route), ("ref", moe_route_ref)]:
        w, ids = fn(hidden, gate, bias, K, SCALE)
        assert w.dtype == torch.float32 and ids.dtype == torch.int32
        got_w, got_ids = by_expert(w, ids)
        assert torch.equal(got_ids, want_ids), f"{name}: ids differ"
        assert_close(f"{name} weights", got_w, want_w)
        assert_close(f"{name} weight sum", w.sum(-1), torch.full((T,), SCALE))


def test_bias_changes_selection_not_weights():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, D, generator=g)
    gate = 0.3 * torch.randn(E, D, generator=g)
    bias = torch.zeros(E)
    bias[0] = 10.0  # expert 0 always chosen, with its unbiased score as weight
    w, ids = moe_route(hidden, gate, bias, K, SCALE)
    assert (ids[:, 0] == 0).all()
    scores = torch.sigmoid(hidden @ gate.t())
    chosen = scores.gather(1, ids.long())
    assert_close("weights", w, chosen / chosen.sum(-1, keepdim=True) * SCALE)


def test_fp32_gate_split_is_exact():
    """bf16 hidden x fp32 gate: the three-way bf16 split gives the fp32 logits' choices and
    weights (gate values with more than 8 significand bits, unlike a bf16 checkpoint's)."""
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(40, D, generator=g).to(torch.bfloat16)
    gate = 0.3 * torch.randn(E, D, generator=g) * (1 + 1e-3 * torch.randn(E, D, generator=g))
    bias = 0.1 * torch.randn(E, generator=g)
    w, ids = moe_route(hidden, gate, bias, K, SCALE)
    rw, rids = moe_route_ref(hidden, gate, bias, K, SCALE)
    assert torch.equal(ids, rids)
    assert_close("weights", w, rw)


@pytest.mark.parametrize("T", [5, 33])
def test_route_over_hidden_parts(T):
    """A hidden size of several BLOCK_D slices: decode batches sum per-slice logits (the
    second kernel) and choose what the reference chooses."""
    assert T <= PARTS_MAX_T
    d = 200  # 7 slices of the interpreter's 32 columns
    g = torch.Generator().manual_seed(T)
    hidden = torch.randn(T, d, generator=g).to(torch.bfloat16)
    gate = d**-0.5 * torch.randn(E, d, generator=g)
    bias = 0.1 * torch.randn(E, generator=g)
    w, ids = moe_route(hidden, gate, bias, K, SCALE)
    rw, rids = moe_route_ref(hidden, gate, bias, K, SCALE)
    assert torch.equal(ids, rids)
    assert_close("weights", w, rw)


def test_route_prefill_batches_in_one_kernel():
    """Past PARTS_MAX_T tokens one program routes 64 tokens over the whole hidden size."""
    T = PARTS_MAX_T + 3
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(T, D, generator=g)
    gate = 0.3 * torch.randn(E, D, generator=g)
    bias = 0.1 * torch.randn(E, generator=g)
    w, ids = moe_route(hidden, gate, bias, K, SCALE)
    rw, rids = moe_route_ref(hidden, gate, bias, K, SCALE)
    same = (ids == rids).all(-1)
    assert same.float().mean() >= 0.999  # near-ties may swap in a rare token
    assert_close("weights", w[same], rw[same])
