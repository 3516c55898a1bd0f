"""Out-of-memory recovery on the demo checkpoint (CPU): an allocation failure injected into
the engine's stages (`Engine.stages`) makes the engine split and retry through its own
recovery code; every request still finishes with the outputs of the run that never failed,
and a request that fails even alone in the smallest pieces gets `resources_exhausted`."""

from __future__ import annotations

import pytest
import torch

from tests.factories import make_audio, make_image, make_video
from workers.engine.engine import Engine, EngineConfig, Prepared
from workers.engine.recovery import OutOfMemory, ResourcesExhausted
from workers.engine.request import SamplingParams
from workers.model.prompt import PromptBuilder
from workers.outcome import error_of

GREEDY = SamplingParams(max_tokens=6, temperature=0.0)
SEEDED = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.9, seed=7)
EVS = 0.5


def requests(pb: PromptBuilder) -> list[tuple[str, list, SamplingParams]]:
    g = torch.Generator().manual_seed(5)
    media = [
        [],
        [make_image((6, 10), g)],
        [make_video(5, (6, 8), g, make_audio([40000], g))],
        [make_audio([32000], g)],
        [make_image((4, 4), g), make_image((8, 6), g)],
        [],
    ]
    params = [GREEDY] * 5 + [SEEDED]
    return [
        (pb.render(items, f"Request {i}: describe it.", thinking=False), items, sp)
        for i, (items, sp) in enumerate(zip(media, params, strict=True))
    ]


def run(model, pb, inject=None) -> list:
    """Every request through a fresh engine (`inject(engine)` wraps its stages first) ->
    per request its output ids, or the exception its future raised."""
    cfg = EngineConfig(
        max_running=4, kv_capacity_tokens=1 << 14, max_seq_len=4096, prefill_token_budget=200
    )
    eng = Engine(model, pb.tokenizer, cfg)
    if inject:
        inject(eng)
    futures = [eng.submit(Prepared(t, items, sp, EVS)) for t, items, sp in requests(pb)]
    eng.start()
    try:
        out = []
        for f in futures:
            try:
                out.append(f.result(timeout=120)[0].output_ids)
            except Exception as exc:
                out.append(exc)
    finally:
        eng.close()
    assert eng.cache.num_free_slots == cfg.max_running and eng.scheduler.reserved_tokens == 0
    return out


def failing(stage, when, fired: list, run_first: bool = False):
    """`stage`, raising OutOfMemory when `when(*args)` — after running the real stage if
    `run_first` (a forward that failed late leaves the cache advanced, a sampler its
    generators drawn)."""

    def wrapped(*args):
        if when(*args):
            fired.append(1)
            if run_first:
                stage(*args)
            raise OutOfMemory("injected: CUDA out of memory")
        return stage(*args)

    return wrapped


@pytest.fixture(scope="module")
def unsplit(demo):
    model, pb = demo
    out = run(model, pb)
    assert all(isinstance(ids, list) and len(ids) > 0 for ids in out)
    return out


def test_every_stage_splits_and_retries_to_the_same_outputs(demo, unsplit):
    model, pb = demo
    fired = {k: [] for k in ("encode", "prefill", "decode", "sample")}
    engines = []

    def inject(eng: Engine) -> None:
        engines.append(eng)
        s = eng.stages
        s.encode = failing(s.encode, lambda group, pieces: len(group) > 1, fired["encode"])
        s.prefill = failing(s.prefill, lambda chunks: len(chunks) > 1, fired["prefill"], True)
        # On the GPU decode replays a CUDA graph, which allocates nothing: an out-of-memory
        # can only come before it touched the cache. Here that is where it is raised.
        eng.steps.decode_is_atomic = lambda n: True
        s.decode = failing(s.decode, lambda reqs: len(reqs) > 2, fired["decode"])
        s.sample = failing(s.sample, lambda reqs, hidden: len(reqs) > 1, fired["sample"], True)

    assert run(model, pb, inject) == unsplit
    assert all(fired.values()), {k: len(v) for k, v in fired.items()}
    assert engines[0].stats.ooms == {k: len(v) for k, v in fired.items()}  # each one counted


def test_a_request_that_cannot_fit_alone_fails_with_resources_exhausted(demo, unsplit):
    model, pb = demo
    texts = [t for t, _, _ in requests(pb)]
    big_media, big_prompt = texts[2], texts[4]  # the video, the two images

    def inject(eng: Engine) -> None:
        s = eng.stages
        s.encode = failing(
            s.encode, lambda group, pieces: any(p.prompt == big_media for p in group), []
        )
        s.prefill = failing(
            s.prefill,
            lambda chunks: any(c.request.rid == rid_of(eng, big_prompt) for c in chunks),
            [],
            True,
        )

    out = run(model, pb, inject)
    for k, (ids, want) in enumerate(zip(out, unsplit, strict=True)):
        if k in (2, 4):
            assert isinstance(ids, ResourcesExhausted), ids
            assert error_of(ids, "job").code == "resources_exhausted"
        else:
            assert ids == want  # the rest of the batch is unaffected


def rid_of(eng: Engine, prompt: str) -> str | None:
    """The engine's request id of `prompt` (requests are admitted in submission order)."""
    for rid, (prepared, _) in eng._pending.items():
        if prepared.prompt == prompt:
            return rid
    return None
