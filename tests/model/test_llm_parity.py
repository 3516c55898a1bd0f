"""NemotronH on the CPU (float32, PyTorch references) against transformers' NemotronH.

Tiny config with every block type; the mamba chunk (8) is small so prompts cross chunks.
The reference clamps dt >= time_step_min in its chunked prefill only (docs/model.md §9.3): its
time_step_min is set to 1e-12 so the clamp never fires and both sides compute the same.
"""

import pytest
import torch
from transformers import NemotronHForCausalLM

from benchmarks.e2e_reference import hf_config
from tests.model.parity import rel_err
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.config import LLMConfig
from workers.model.fullsize import parameter_counts
from workers.model.moe import parse_expert_key
from workers.model.nemotron_h import NemotronH

PATTERN = "M*EM*EME"
CFG = LLMConfig(
    hidden_size=64,
    vocab_size=512,
    pattern=PATTERN,
    mamba_num_heads=4,
    mamba_head_dim=8,
    n_groups=2,
    ssm_state_size=16,
    conv_kernel=4,
    chunk_size=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
)
PROMPT_LEN, STEPS = 37, 16


def reference_model() -> NemotronHForCausalLM:
    hf = hf_config(CFG, time_step_min=1e-12)
    hf._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = NemotronHForCausalLM(hf).eval()
    # Random weights at unit-ish activation scale, so every mixer moves the logits.
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                t.copy_(1 + 0.2 * torch.randn_like(t))
            elif leaf == "A_log":
                t.copy_(torch.log(torch.rand_like(t) * 7 + 1))
            elif leaf in ("D", "dt_bias", "e_score_correction_bias"):
                t.copy_(0.5 * torch.randn_like(t))
            elif leaf == "bias":
                t.copy_(0.1 * torch.randn_like(t))
            elif name.endswith("embeddings.weight"):
                t.normal_()
            else:
                t.normal_(0, t.shape[-1] ** -0.5)
    return ref


def copy_weights(ref: NemotronHForCausalLM) -> NemotronH:
    ours = NemotronH(CFG)
    params = ours.state_dict()
    seen = set()
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            name = name.removeprefix("model.")
            if name.endswith(("experts.up_proj", "experts.down_proj")):
                experts_name, which = name.rsplit(".", 1)
                stack = ours.get_submodule(f"{experts_name}.{which}")
                for j in range(t.shape[0]):  # the checkpoint's per-expert layout
                    key = f"experts.{j}.{which}.weight"
                    assert parse_expert_key(key) == (j, which, "weight")
                    stack.load(j, "weight", t[j])
                seen.add(f"{name}.weight")
            else:
                params[name].copy_(t)
                seen.add(name)
    assert seen == set(params), set(params) ^ seen
    return ours.eval()


def new_cache(num_slots=2) -> HybridCache:
    return HybridCache(CFG, num_slots, 256, 128, "cpu", torch.float32)


def step(model, cache, ids_per_seq, slots, context_lens):
    """One forward of several sequences packed; returns logits of every new token."""
    lens = [len(ids) for ids in ids_per_seq]
    cache.reserve(slots, [c + n for c, n in zip(context_lens, lens, strict=True)])
    batch = ForwardBatch.build(lens, slots, context_lens, "cpu")
    hidden = model(model.embed(torch.cat(ids_per_seq)), batch, cache)
    return model.logits(hidden)


@pytest.fixture(scope="module")
def setup():
    ref = reference_model()
    ours = copy_weights(ref)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, CFG.vocab_size, (PROMPT_LEN,), generator=gen)
    other = torch.randint(0, CFG.vocab_size, (21,), generator=gen)
    with torch.no_grad():
        out = ref(input_ids=prompt[None], use_cache=True)
        ref_cache, prefill_logits = out.cache, out.logits[0]
        chain, step_logits = [], []
        nxt = prefill_logits[-1].argmax()
        for _ in range(STEPS):
            chain.append(nxt)
            out = ref(input_ids=nxt.view(1, 1), cache=ref_cache, use_cache=True)
            step_logits.append(out.logits[0, -1])
            nxt = step_logits[-1].argmax()
    return {
        "ours": ours,
        "prompt": prompt,
        "other": other,
        "prefill_logits": prefill_logits,
        "chain": torch.stack(chain),
        "step_logits": torch.stack(step_logits),
    }


def test_prefill_matches_reference(setup):
    cache = new_cache()
    logits = step(setup["ours"], cache, [setup["prompt"]], [cache.alloc_slot()], [0])
    assert rel_err(logits, setup["prefill_logits"]) < 1e-4


def test_decode_matches_reference_with_its_ids_fed_back(setup):
    model, prompt, chain = setup["ours"], setup["prompt"], setup["chain"]
    cache = new_cache()
    slot = cache.alloc_slot()
    step(model, cache, [prompt], [slot], [0])
    compared = 0
    for i in range(STEPS):
        logits = step(model, cache, [chain[i : i + 1]], [slot], [PROMPT_LEN + i])[0]
        want = setup["step_logits"][i]
        assert rel_err(logits, want) < 1e-4, f"step {i}"
        top2 = want.topk(2).values
        if top2[0] - top2[1] > 1e-3:
            assert logits.argmax() == want.argmax(), f"greedy id differs at step {i}"
            compared += 1
    assert compared >= STEPS // 2  # the greedy check must not be vacuous


def test_chunked_prefill_equals_one_shot(setup):
    model, prompt = setup["ours"], setup["prompt"]
    cache = new_cache()
    one, chunked = cache.alloc_slot(), cache.alloc_slot()
    whole = step(model, cache, [prompt], [one], [0])
    parts, ctx = [], 0
    for n in (13, 11, 13):  # boundaries inside mamba chunks of 8
        parts.append(step(model, cache, [prompt[ctx : ctx + n]], [chunked], [ctx]))
        ctx += n
    # fp32 throughout; the chunk boundaries change the summation order only (1.4e-5 was
    # seen on one CPU, < 1e-5 on another): the same bar as the reference comparisons above
    assert rel_err(torch.cat(parts), whole) < 1e-4
    nxt = setup["chain"][:1]
    after = step(model, cache, [nxt, nxt], [one, chunked], [PROMPT_LEN, PROMPT_LEN])
    assert rel_err(after[1], after[0]) < 1e-5


def test_packed_sequences_equal_each_alone(setup):
    model, prompt, other = setup["ours"], setup["prompt"], setup["other"]
    alone = new_cache()
    a, b = alone.alloc_slot(), alone.alloc_slot()
    la = step(model, alone, [prompt], [a], [0])
    lb = step(model, alone, [other], [b], [0])
    da = step(model, alone, [prompt[:1]], [a], [PROMPT_LEN])
    db = step(model, alone, [other[:1]], [b], [len(other)])

    packed = new_cache(num_slots=3)
    # slot 0 is left unused so the packed sequences do not sit at the slots used alone
    packed.alloc_slot()
    pa, pb = packed.alloc_slot(), packed.alloc_slot()
    # a's first 10 tokens cached beforehand: the packed step mixes a continuation and a new one
    step(model, packed, [prompt[:10]], [pa], [0])
    both = step(model, packed, [prompt[10:], other], [pa, pb], [10, 0])
    assert rel_err(both[: PROMPT_LEN - 10], la[10:]) < 1e-5
    assert rel_err(both[PROMPT_LEN - 10 :], lb) < 1e-5
    dec = step(model, packed, [prompt[:1], other[:1]], [pa, pb], [PROMPT_LEN, len(other)])
    assert rel_err(dec[0], da[0]) < 1e-5
    assert rel_err(dec[1], db[0]) < 1e-5


def test_unknown_block_type_names_the_layer():
    with pytest.raises(ValueError, match="layer 2"):
        NemotronH(LLMConfig(pattern="ME-M"), device="meta")


def test_full_size_parameter_count():
    counts = parameter_counts(NemotronH(LLMConfig(), device="meta", dtype=torch.bfloat16))
    assert round(counts["total"] / 1e9, 3) == 31.578  # docs/model.md §1.5
    assert round(counts["routed_experts"] / 1e9, 3) == 29.375
    assert counts["embeddings"] == counts["lm_head"] == 131072 * 2688


def test_expert_stack_load_rejects_wrong_shape():
    stack = NemotronH(CFG).layers[2].mixer.experts.up_proj
    with pytest.raises(ValueError, match=r"shape \(64, 32\), expected \(32, 64\)"):
        stack.load(3, "weight", torch.zeros(CFG.hidden_size, CFG.moe_intermediate_size))
    assert parse_expert_key("experts.3.gate_proj.weight") is None
