"""The threaded batch engine on the demo checkpoint (CPU): batched equals one at a time,
cancel frees the slot, memory-budget admission makes requests wait, nothing starves."""

from __future__ import annotations

import time
from concurrent.futures import wait

import pytest
import torch

from tests.factories import make_audio, make_image, make_video
from workers.engine.engine import Engine, EngineConfig, Prepared
from workers.engine.generate import generate
from workers.engine.request import SamplingParams
from workers.model.omni import build_prompt_embeds
from workers.model.prompt import PromptBuilder

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
EVS = 0.5


def mixed_requests(pb: PromptBuilder, n: int) -> list[tuple[str, list]]:
    """n prompts cycling through text, image, video with soundtrack, audio and two images."""
    g = torch.Generator().manual_seed(3)
    kinds = [
        lambda: [],
        lambda: [make_image((6, 10), g)],
        lambda: [make_video(5, (6, 8), g, make_audio([40000], g))],
        lambda: [make_audio([480000, 32000], g)],
        lambda: [make_image((4, 4), g), make_image((8, 6), g)],
    ]
    out = []
    for i in range(n):
        items = kinds[i % len(kinds)]()
        out.append((pb.render(items, f"Request {i}: describe it.", thinking=False), items))
    return out


def engine(model, pb, **kw) -> Engine:
    cfg = EngineConfig(
        **{"max_running": 8, "kv_capacity_tokens": 1 << 14, "max_seq_len": 4096, **kw}
    )
    return Engine(model, pb.tokenizer, cfg).start()


def test_batched_equals_one_at_a_time(demo):
    model, pb = demo
    reqs = mixed_requests(pb, 10)
    alone = []
    for text, items in reqs:
        embeds, _, _ = build_prompt_embeds(model, pb.tokenizer, text, items, EVS)
        alone.append(generate(model.llm, [embeds], [GREEDY])[0].ids)
    # max_running 4 < 10 requests: some wait for a slot and join a running batch later
    eng = engine(model, pb, max_running=4, prefill_token_budget=200)
    try:
        released = []  # the engine tells once it holds a request's media no more
        preps = [
            Prepared(text, items, GREEDY, EVS, on_host_release=lambda k=k: released.append(k))
            for k, (text, items) in enumerate(reqs)
        ]
        futures = [eng.submit(p) for p in preps]
        batched = [f.result(timeout=120)[0] for f in futures]
    finally:
        eng.close()
    assert sorted(released) == list(range(len(reqs)))
    assert [r.output_ids for r in batched] == alone
    assert all(len(ids) == GREEDY.max_tokens for ids in alone)
    assert eng.cache.num_free_slots == 4 and eng.scheduler.reserved_tokens == 0
    assert all(p.items == [] and p.tokens is None for p in preps)  # media let go once encoded


def test_stats_count_evs(demo):
    model, pb = demo
    (text, items) = mixed_requests(pb, 3)[2]  # the video
    eng = engine(model, pb)
    try:
        req, stats = eng.submit(Prepared(text, items, GREEDY, EVS)).result(timeout=60)
    finally:
        eng.close()
    assert stats.video_tokens_after_evs < stats.video_tokens_before_evs
    assert req.prompt_len == stats.prompt_tokens


def test_cancel_frees_the_slot_and_others_finish(demo):
    model, pb = demo
    reqs = mixed_requests(pb, 3)
    eng = engine(model, pb, max_running=2)
    try:
        long = Prepared(*reqs[0], SamplingParams(max_tokens=3000, ignore_eos=True), EVS)
        others = [Prepared(t, i, GREEDY, EVS) for t, i in reqs[1:]]
        eng.submit(long)
        for p in others:
            eng.submit(p)
        # the long request holds a slot; the two others share the remaining one in turn
        first = others[0].future.result(timeout=60)[0]
        assert first.finish_reason == "length"
        eng.cancel(long.rid)
        req, _ = long.future.result(timeout=60)
        assert req.finish_reason == "cancelled" and 0 < len(req.output_ids) < 3000
        assert others[1].future.result(timeout=60)[0].finish_reason == "length"
    finally:
        eng.close()
    assert eng.cache.num_free_slots == 2


def test_cancel_before_the_engine_takes_the_request_wakes_waiters(demo):
    """A cancel that reaches the engine with its request (both still queued) cancels the
    future so that `concurrent.futures.wait` sees it done, as the pipeline waits."""
    model, pb = demo
    cfg = EngineConfig(max_running=8, kv_capacity_tokens=1 << 14, max_seq_len=4096)
    eng = Engine(model, pb.tokenizer, cfg)  # not started: both messages wait in its inbox
    first, second = [Prepared(t, i, GREEDY, EVS) for t, i in mixed_requests(pb, 2)]
    gone, kept = eng.submit(first), eng.submit(second)
    eng.cancel(first.rid)
    eng.start()
    try:
        done = wait([gone, kept], timeout=60).done
        assert done == {gone, kept} and gone.cancelled()
        req, _ = kept.result()
        assert req.finish_reason == "length"
    finally:
        eng.close()


def test_memory_budget_makes_requests_wait_and_rejects_what_never_fits(demo):
    model, pb = demo
    reqs = mixed_requests(pb, 6)
    lens = [build_prompt_embeds(model, pb.tokenizer, t, i, EVS)[0].shape[0] for t, i in reqs]
    # room for the largest request plus a little: at most ~one runs at a time
    capacity = max(lens) + GREEDY.max_tokens + 10
    eng = engine(model, pb, kv_capacity_tokens=capacity)
    try:
        huge = Prepared(*reqs[0], SamplingParams(max_tokens=capacity + 1), EVS)
        preps = [Prepared(t, i, GREEDY, EVS) for t, i in reqs]
        eng.submit(huge)
        for p in preps:
            eng.submit(p)
        results = [p.future.result(timeout=120)[0] for p in preps]
        rejected, _ = huge.future.result(timeout=10)
    finally:
        eng.close()
    assert rejected.finish_reason == "rejected" and rejected.output_ids == []
    assert all(r.finish_reason == "length" for r in results)


def test_a_failing_request_fails_alone(demo):
    model, pb = demo
    (text, items) = mixed_requests(pb, 2)[1]
    eng = engine(model, pb)
    try:
        bad = eng.submit(Prepared("no marker for the image here", items, GREEDY, EVS))
        good = eng.submit(Prepared(text, items, GREEDY, EVS))
        with pytest.raises(ValueError):
            bad.result(timeout=60)
        assert good.result(timeout=60)[0].finish_reason == "length"
    finally:
        eng.close()


def test_encoding_stays_within_the_prompt_budget(demo):
    """Queued requests are encoded only while the prompt tokens waiting for prefill stay
    within `prompt_budget`: thousands of queued pages would not fit on the GPU. The embeddings
    of a prefilled prompt are dropped (the cache holds it)."""
    model, pb = demo
    reqs = mixed_requests(pb, 12)
    lens = [build_prompt_embeds(model, pb.tokenizer, t, i, EVS)[0].shape[0] for t, i in reqs]
    budget = max(lens) + 8
    assert sum(lens) > 3 * budget  # encoding everything at once would pass the bound
    eng = engine(model, pb, max_running=12, prefill_token_budget=8, prompt_budget=budget)
    try:
        futures = [eng.submit(Prepared(t, i, GREEDY, EVS)) for t, i in reqs]
        results = [f.result(timeout=120)[0] for f in futures]
    finally:
        eng.close()
    assert all(len(r.output_ids) == GREEDY.max_tokens for r in results)
    assert 0 < eng.stats.peak_unprefilled <= budget
    assert all(r.prompt_embeds is None for r in results)


def test_idle_time_and_lone_decode_steps_are_counted(demo):
    """A request alone: the engine waited for it (idle), then decoded it with nothing else to
    run, every decode step of it counted as such."""
    model, pb = demo
    eng = engine(model, pb)
    try:
        time.sleep(0.3)  # the engine thread blocks on its empty inbox meanwhile
        text, items = mixed_requests(pb, 1)[0]
        req, _ = eng.submit(Prepared(text, items, GREEDY, EVS)).result(timeout=60)
    finally:
        eng.close()
    assert len(req.output_ids) == GREEDY.max_tokens
    assert eng.stats.idle_seconds >= 0.25
    # the first token comes from the prefill step, each other one from a decode step
    assert eng.stats.lone_decode_steps == eng.stats.decode_steps == GREEDY.max_tokens - 1
