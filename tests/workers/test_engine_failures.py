"""The engine thread under failures it must not turn into a wedged worker (demo checkpoint, CPU):
a poisoned request (a seed no generator takes) fails alone and the engine keeps serving; a
loop that dies anyway fails every request it held and every later one, loudly."""

from __future__ import annotations

import threading

import pytest

from workers.engine.engine import Engine, EngineConfig, EngineDead, Prepared
from workers.engine.request import SamplingParams

SAMPLED = SamplingParams(max_tokens=4, temperature=1.0, seed=7)


@pytest.fixture
def engine(demo):
    model, prompts = demo
    config = EngineConfig(max_running=4, kv_capacity_tokens=1 << 12, max_seq_len=1024)
    eng = Engine(model, prompts.tokenizer, config).start()
    eng.render = lambda text: prompts.render([], text, thinking=False)
    yield eng
    eng.close()


def _text(engine, text: str, params: SamplingParams = SAMPLED, **kw) -> Prepared:
    return Prepared(engine.render(text), [], params, 0.0, **kw)


def test_a_seed_no_generator_takes_fails_its_request_alone(engine):
    # 2**64 overflowed torch's manual_seed inside the engine thread, which then died with
    # every job of the worker waiting on it.
    poisoned = SamplingParams(max_tokens=4, temperature=1.0, seed=2**64)
    bad = engine.submit(_text(engine, "poisoned", poisoned))
    good = engine.submit(_text(engine, "innocent"))
    with pytest.raises(ValueError, match="seed"):
        bad.result(timeout=60)
    req, _ = good.result(timeout=60)
    assert req.finish_reason == "length" and len(req.output_ids) == 4
    assert engine.alive
    again = engine.submit(_text(engine, "after"))
    assert again.result(timeout=60)[0].finish_reason == "length", "still serving"


def test_a_dead_loop_fails_every_request_and_says_so(engine):
    # A bug in the loop itself (here: a release callback that raises) is not any one
    # request's failure: the engine dies, and nothing may wait on it for ever.
    stuck = threading.Event()
    waiting = engine.submit(_text(engine, "long", SamplingParams(max_tokens=400)))

    def boom():
        stuck.set()
        raise RuntimeError("a bug in the engine loop")

    engine.submit(_text(engine, "poison", on_host_release=boom))
    assert stuck.wait(60)
    with pytest.raises(EngineDead):
        waiting.result(timeout=60)
    assert not engine.alive
    with pytest.raises(EngineDead):
        engine.submit(_text(engine, "later")).result(timeout=5)
