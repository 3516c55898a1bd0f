"""Scheduler on the CPU with fake runner outputs: admission, chunking, cancel, fairness."""

import itertools

import torch

from tests.factories import TINY_LLM
from workers.engine.request import Request, RequestState, SamplingParams
from workers.engine.scheduler import Scheduler, SchedulerConfig
from workers.model.cache import HybridCache

_ids = itertools.count()


def make_scheduler(max_running: int = 4, kv_capacity_tokens: int = 1000, **kw) -> Scheduler:
    cache = HybridCache(TINY_LLM, max_running, kv_capacity_tokens, 512, "cpu", torch.float32)
    return Scheduler(SchedulerConfig(**kw), cache)


def make_request(prompt_len: int, max_tokens: int = 4, **params) -> Request:
    return Request(
        rid=f"r{next(_ids)}",
        prompt_embeds=torch.zeros(prompt_len, 2),
        params=SamplingParams(max_tokens=max_tokens, **params),
    )


def run_step(sched: Scheduler, token: int = 7):
    plan = sched.schedule()
    sampled = {r.rid: token for r in plan.decode}
    sampled |= {c.request.rid: token for c in plan.prefill if c.is_last}
    return plan, sched.update(plan, sampled)


def test_prompt_is_chunked_to_the_budget_and_then_decodes():
    sched = make_scheduler(prefill_token_budget=64)
    req = make_request(150, max_tokens=3)
    sched.add(req)
    lengths = []
    while req.state is not RequestState.DECODE:
        plan, _ = run_step(sched)
        lengths += [c.length for c in plan.prefill]
    assert lengths == [64, 64, 22]
    assert req.num_computed == 150 and req.output_ids == [7]
    finished = []
    while not finished:
        plan, finished = run_step(sched)
        assert plan.decode == [req] and not plan.prefill
    assert req.output_ids == [7, 7, 7] and req.finish_reason == "length"
    assert req.num_computed == 152  # the last sampled token is never fed back
    assert not sched.has_work() and sched.reserved_tokens == 0 and sched.slots.num_free_slots == 4


def test_decode_and_prefill_share_a_step():
    sched = make_scheduler(prefill_token_budget=10)
    a, b = make_request(5, max_tokens=10), make_request(30, max_tokens=10)
    sched.add(a)
    run_step(sched)  # a's whole prompt
    sched.add(b)
    plan, _ = run_step(sched)
    assert plan.decode == [a]
    assert [(c.request, c.length) for c in plan.prefill] == [(b, 10)]


def test_small_decode_batch_waits_while_prompts_prefill():
    sched = make_scheduler(prefill_token_budget=10, decode_min_batch=2, max_decode_skips=2)
    a = make_request(5, max_tokens=20)
    sched.add(a)
    run_step(sched)  # a's prompt: a is ready to decode
    sched.add(make_request(100, max_tokens=5))  # ten steps of prompt work
    decodes = [bool(run_step(sched)[0].decode) for _ in range(7)]
    # One ready sequence, prompt work planned: it waits at most 2 steps for company.
    assert decodes == [False, False, True, False, False, True, False]
    assert len(a.output_ids) == 1 + 2


def test_decode_batch_runs_when_full_or_without_prompt_work():
    sched = make_scheduler(prefill_token_budget=10, decode_min_batch=2, max_decode_skips=9)
    a, b = make_request(5, max_tokens=20), make_request(5, max_tokens=20)
    sched.add(a)
    run_step(sched)
    plan, _ = run_step(sched)  # nothing left to prefill: decode even one sequence
    assert plan.decode == [a] and not plan.prefill
    sched.add(b)
    sched.add(make_request(100, max_tokens=5))
    plan, _ = run_step(sched)  # b's prompt and a chunk of the long one; only a is ready
    assert not plan.decode and plan.prefill[0].request is b
    plan, _ = run_step(sched)  # a and b ready: enough to decode beside the prompt chunk
    assert plan.decode == [a, b] and plan.prefill


def test_stop_token_finishes_unless_ignore_eos():
    sched = make_scheduler()
    stop = make_request(3, 5, stop_ids=(7,))
    bench = make_request(3, 5, stop_ids=(7,), ignore_eos=True)
    sched.add(stop)
    sched.add(bench)
    _, done = run_step(sched)
    assert done == [stop] and stop.finish_reason == "stop" and stop.output_ids == []
    while sched.has_work():
        run_step(sched)
    assert len(bench.output_ids) == 5 and bench.finish_reason == "length"


def test_admission_respects_slots_and_kv_budget_in_arrival_order():
    sched = make_scheduler(max_running=2, kv_capacity_tokens=100)
    big, small1, small2 = make_request(60, 20), make_request(10, 5), make_request(10, 5)
    for r in (big, small1, small2):
        sched.add(r)
    run_step(sched)
    assert big.state is not RequestState.WAITING and small1.state is not RequestState.WAITING
    assert sched.reserved_tokens == 95
    assert small2.state is RequestState.WAITING  # no slot left
    while small2.state is RequestState.WAITING:
        run_step(sched)
    assert small1.finished  # its slot went to small2


def test_head_of_queue_is_not_overtaken():
    sched = make_scheduler(max_running=4, kv_capacity_tokens=100)
    first = make_request(50, 30)  # occupies 80 rows
    sched.add(first)
    run_step(sched)
    waiting_big, later_small = make_request(40, 10), make_request(5, 5)
    sched.add(waiting_big)
    sched.add(later_small)
    plan, _ = run_step(sched)
    assert waiting_big.state is RequestState.WAITING
    assert later_small.state is RequestState.WAITING  # would fit, but must not overtake
    while not waiting_big.output_ids:
        run_step(sched)
    assert first.finished


def test_request_that_can_never_fit_is_rejected_without_blocking_others():
    sched = make_scheduler(kv_capacity_tokens=100)
    huge, ok = make_request(200, 1), make_request(10, 1)
    sched.add(huge)
    sched.add(ok)
    assert huge.finished and huge.finish_reason == "rejected"
    run_step(sched)
    assert ok.finished


def test_cancel_frees_the_slot_at_once():
    sched = make_scheduler(max_running=1)
    a, b = make_request(10, 50), make_request(10, 5)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert sched.cancel(a.rid) is a and a.finish_reason == "cancelled"
    assert sched.slots.num_free_slots == 1 and sched.reserved_tokens == 0
    run_step(sched)
    assert b.state is RequestState.DECODE
    assert sched.cancel("nope") is None


def test_thinking_budget_forces_the_end_of_reasoning():
    sched = make_scheduler()
    req = make_request(3, 6, thinking_budget=2, think_end_id=99)
    sched.add(req)
    while sched.has_work():
        run_step(sched)
    assert req.output_ids == [7, 7, 99, 7, 7, 7]


def test_many_requests_all_finish():
    sched = make_scheduler(max_running=3, kv_capacity_tokens=200, prefill_token_budget=16)
    reqs = [make_request(5 + 7 * i % 23, 1 + i % 4) for i in range(20)]
    for r in reqs:
        sched.add(r)
    for _ in range(500):
        if not sched.has_work():
            break
        run_step(sched)
    assert all(r.finished and r.finish_reason == "length" for r in reqs)
    assert [len(r.output_ids) for r in reqs] == [r.params.max_tokens for r in reqs]
