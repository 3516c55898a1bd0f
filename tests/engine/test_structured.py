"""Constrained decoding in the threaded engine on the demo checkpoint (CPU): every answer of
every schema parses and validates, greedy and sampled at temperature 1 (the random model is
the hardest case: it has no idea what JSON is); structured and free rows share a batch
without touching each other; reasoning runs free and the answer after `</think>` is
constrained; an unbounded schema ends as `length`, never silently; cancel frees the slot."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from contract.json_grammar import json_grammar
from tests.engine.structured_schemas import SCHEMAS, UNBOUNDED
from workers.engine.engine import Engine, EngineConfig, Prepared
from workers.engine.grammar import GrammarCompiler
from workers.engine.request import SamplingParams
from workers.model.demo import write_demo_checkpoint
from workers.model.loader import load_model
from workers.model.prompt import PromptBuilder

MAX_TOKENS = 400
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    write_demo_checkpoint(d)
    model, info = load_model(d, "cpu")
    pb = PromptBuilder.from_dir(d)
    stop = tuple(sorted(set(info.generation.eos_token_ids) | {info.model.llm.eos_token_id}))
    compiler = GrammarCompiler(pb.tokenizer.to_str(), model.config.llm.vocab_size, stop)
    return model, pb, compiler, stop


@pytest.fixture(scope="module")
def engine(demo):
    model, pb, _, _ = demo
    cfg = EngineConfig(max_running=32, kv_capacity_tokens=1 << 15, max_seq_len=4096)
    eng = Engine(model, pb.tokenizer, cfg).start()
    yield eng
    eng.close()


def params(stop, temperature=0.0, seed=None, **kw) -> SamplingParams:
    kw.setdefault("max_tokens", MAX_TOKENS)
    return SamplingParams(temperature=temperature, seed=seed, stop_ids=stop, **kw)


def prepared(pb, compiler, schema, sp, thinking=False) -> Prepared:
    prompt = pb.render([], "Answer in JSON.", thinking=thinking)
    grammar = None
    if schema is not None:
        think_end = pb.think_end if thinking else None
        grammar = compiler.compile(json_grammar(schema, strict=True), think_end)
    return Prepared(prompt, [], sp, 0.5, grammar=grammar)


def results(engine, preps):
    """Submit all, then wait: they decode as one batch."""
    futures = [engine.submit(p) for p in preps]
    return [f.result(timeout=300)[0] for f in futures]


def check(pb, schema, req) -> object:
    """The answer of a finished request: stopped on its own, parsed, valid."""
    text = pb.decode(req.output_ids)
    assert req.finish_reason == "stop", (req.finish_reason, text)
    assert len(req.output_ids) < MAX_TOKENS * 3 // 4, text
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    return value


def test_every_schema_greedy_and_sampled(demo, engine):
    model, pb, compiler, stop = demo
    cases = [(name, params(stop)) for name in SCHEMAS]
    cases += [(name, params(stop, 1.0, seed)) for name in SCHEMAS for seed in range(10, 15)]
    preps = [prepared(pb, compiler, SCHEMAS[name], sp) for name, sp in cases]
    values = {}
    for (name, _), req in zip(cases, results(engine, preps), strict=True):
        values.setdefault(name, []).append(check(pb, SCHEMAS[name], req))
    assert len(values) == len(SCHEMAS) >= 20
    # sampling explores: the seeds do not all give the greedy answer
    assert sum(len({json.dumps(v) for v in vs}) > 1 for vs in values.values()) >= len(SCHEMAS) // 2


def test_free_rows_in_a_structured_batch_are_untouched(demo, engine):
    model, pb, compiler, stop = demo
    free = [prepared(pb, compiler, None, params(stop, max_tokens=12)) for _ in range(2)]
    alone = [r.output_ids for r in results(engine, free)]
    invoice = lambda seed: prepared(pb, compiler, SCHEMAS["invoice"], params(stop, 1.0, seed))
    free = lambda: prepared(pb, compiler, None, params(stop, max_tokens=12))
    reqs = results(engine, [invoice(1), free(), invoice(2), invoice(3), free()])
    assert [reqs[1].output_ids, reqs[4].output_ids] == alone
    for req in (reqs[0], reqs[2], reqs[3]):
        check(pb, SCHEMAS["invoice"], req)


def test_json_closing_on_the_last_allowed_token_is_a_stop(demo, engine):
    model, pb, compiler, stop = demo
    schema = SCHEMAS["flat"]
    (whole,) = results(engine, [prepared(pb, compiler, schema, params(stop))])
    n = len(whole.output_ids)  # the stop token that followed is not part of the output
    exact, short = results(
        engine,
        [
            prepared(pb, compiler, schema, params(stop, max_tokens=n)),
            prepared(pb, compiler, schema, params(stop, max_tokens=n - 1)),
        ],
    )
    assert exact.output_ids == whole.output_ids and exact.finish_reason == "stop"
    assert short.finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(pb.decode(short.output_ids))


def test_unbounded_schema_ends_as_length(demo, engine):
    model, pb, compiler, stop = demo
    preps = [prepared(pb, compiler, UNBOUNDED, params(stop, 1.0, s, max_tokens=60)) for s in SEEDS]
    for req in results(engine, preps):
        assert req.finish_reason == "length" and len(req.output_ids) == 60
        text = pb.decode(req.output_ids)
        assert text.startswith('{"label":"')
        with pytest.raises(ValueError):
            json.loads(text)


def test_reasoning_is_free_and_the_answer_constrained(demo, engine):
    model, pb, compiler, stop = demo
    schema = SCHEMAS["action_items"]
    think_end = pb.think_end
    budget = 6  # the random model rarely closes its reasoning: the budget forces `</think>`
    preps = [
        prepared(
            pb, compiler, schema,
            params(stop, 1.0, s, thinking_budget=budget, think_end_id=think_end), thinking=True,
        )
        for s in SEEDS
    ]  # fmt: skip
    grammar = json_grammar(schema, strict=True)
    for req in results(engine, preps):
        k = req.output_ids.index(think_end)
        assert k <= budget
        reasoning = req.output_ids[:k]
        # the reasoning is not what the grammar would have allowed from its first token
        assert compiler.compile(grammar).matcher.validate_tokens(reasoning) < len(reasoning)
        out = pb.parse_output(req.output_ids, thinking=True)
        assert out.reasoning is not None
        jsonschema.validate(json.loads(out.text), schema)
        assert req.finish_reason == "stop"


def test_cancel_a_constrained_request(demo, engine):
    model, pb, compiler, stop = demo
    long = prepared(pb, compiler, UNBOUNDED, params(stop, 1.0, 7, max_tokens=3000))
    future = engine.submit(long)
    deadline = time.monotonic() + 60
    while not engine.scheduler.running and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # some tokens in
    engine.cancel(long.rid)
    req, _ = future.result(timeout=60)
    assert req.finish_reason == "cancelled" and 0 < len(req.output_ids) < 3000
    assert engine.cache.num_free_slots == engine.config.max_running
    # the engine and its mask buffers serve the next structured request as before
    (after,) = results(engine, [prepared(pb, compiler, SCHEMAS["flat"], params(stop, 1.0, 9))])
    check(pb, SCHEMAS["flat"], after)


def test_compiled_grammars_are_cached_and_copied(demo):
    model, pb, compiler, stop = demo
    grammar = json_grammar(SCHEMAS["invoice"] | {"title": "cached"}, strict=True)
    before = len(compiler._cache)
    a, b = compiler.compile(grammar), compiler.compile(grammar)
    assert len(compiler._cache) == before + 1
    assert a.matcher is not b.matcher  # one matcher per request, from one compiled grammar
    first = pb.tokenizer.encode('{"number":"', add_special_tokens=False).ids
    assert a.matcher.consume_tokens(first)
    assert b.matcher.validate_tokens(first) == len(first)  # b did not move with a
    with pytest.raises(ValueError, match="does not compile"):
        compiler.compile(json_grammar({"type": "strin"}, strict=True))


def test_json_is_compact_whatever_the_schema_asks(demo, engine):
    model, pb, compiler, stop = demo
    schema = SCHEMAS["objects_array"] | {
        "x-guidance": {"whitespace_flexible": True, "whitespace_pattern": "[ \\n]+"}
    }
    preps = [prepared(pb, compiler, schema, params(stop, 1.0, s)) for s in SEEDS]
    for req in results(engine, preps):
        value = check(pb, schema, req)
        names = "".join(p["name"] for p in value["people"])
        # no whitespace between tokens: the only spaces are inside the strings
        assert pb.decode(req.output_ids).count(" ") == names.count(" ")
