"""The simple generation loop: batching, chunked prefill, stop ids, limits, seeds, cancel."""

from __future__ import annotations

import pytest
import torch

from workers.engine.generate import generate
from workers.engine.request import Request, SamplingParams
from workers.engine.runner import ModelRunner
from workers.engine.scheduler import PrefillChunk
from workers.model.cache import HybridCache
from workers.model.demo import write_demo_checkpoint
from workers.model.loader import load_model


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model, _ = load_model(write_demo_checkpoint(tmp_path_factory.mktemp("gen"), seed=4))
    return model.llm


def _prompt(llm, n: int, seed: int) -> torch.Tensor:
    ids = torch.randint(32, 512, (n,), generator=torch.Generator().manual_seed(seed))
    return llm.embed(ids)


def test_batched_equals_alone_and_chunking_is_invisible(llm):
    prompts = [_prompt(llm, 37, 0), _prompt(llm, 5, 1), _prompt(llm, 60, 2)]
    greedy = SamplingParams(max_tokens=10)
    alone = [generate(llm, [p], [greedy])[0].ids for p in prompts]
    batched = generate(llm, prompts, [greedy] * 3)
    chunked = generate(llm, prompts, [greedy] * 3, prefill_chunk=16)
    assert [g.ids for g in batched] == alone == [g.ids for g in chunked]
    assert all(g.finish_reason == "length" and len(g.ids) == 10 for g in batched)


def test_stop_ids_end_a_sequence_and_are_dropped(llm):
    p = _prompt(llm, 20, 3)
    free = generate(llm, [p], [SamplingParams(max_tokens=8)])[0].ids
    stop = free[3]
    cut = generate(llm, [p], [SamplingParams(max_tokens=8, stop_ids=(stop,))])[0]
    assert cut.finish_reason == "stop" and cut.ids == free[: free.index(stop)]
    ignored = SamplingParams(max_tokens=8, stop_ids=(stop,), ignore_eos=True)
    assert generate(llm, [p], [ignored])[0].ids == free


def test_seeded_sampling_is_reproducible(llm):
    p = _prompt(llm, 12, 4)
    sp = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=123)
    a, b = (generate(llm, [p], [sp])[0].ids for _ in range(2))
    assert a == b
    other = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=124)
    assert generate(llm, [p], [other])[0].ids != a


def test_thinking_budget_forces_the_end_of_reasoning(llm):
    sp = SamplingParams(max_tokens=6, thinking_budget=2, think_end_id=13)
    out = generate(llm, [_prompt(llm, 9, 5)], [sp])[0].ids
    assert out[2] == 13 or 13 in out[:2]


def test_cancel_stops_all_sequences(llm):
    polls = iter([False, False])
    gens = generate(
        llm,
        [_prompt(llm, 8, 6), _prompt(llm, 9, 7)],
        [SamplingParams(max_tokens=50)] * 2,
        cancelled=lambda: next(polls, True),
    )
    assert [g.finish_reason for g in gens] == ["cancelled"] * 2
    # polled before every step: two steps ran (prefill + one decode), two tokens each
    assert all(len(g.ids) == 2 for g in gens)


def test_warm_up_leaves_the_cache_as_it_was(llm):
    """The engine's warm-up forwards (runner.warm_up) take a slot and its KV rows and give them
    back; a sequence prefilled after them in that slot decodes as in a fresh cache."""
    dtype = llm.embeddings.weight.dtype
    cache = HybridCache(llm.config, 2, 128, 96, llm.device, dtype, llm.kv_dtype)
    slots, rows = cache.num_free_slots, cache.num_free_rows
    runner = ModelRunner(llm, cache)
    runner.warm_up([1, 7, 96])
    assert (cache.num_free_slots, cache.num_free_rows) == (slots, rows)

    prompt = _prompt(llm, 20, 9)
    want = generate(llm, [prompt], [SamplingParams(max_tokens=1)])[0].ids
    req = Request("r", prompt, SamplingParams(max_tokens=1))
    req.slot = cache.alloc_slot()
    done, hidden = runner.prefill([PrefillChunk(req, 0, 20)])
    assert done == [req] and runner.sample([req], hidden)["r"] == want[0]
