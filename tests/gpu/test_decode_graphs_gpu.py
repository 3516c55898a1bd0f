"""CUDA-graph decode replays give the eager decode's logits, padded batches included, and the
padding rows (the scratch slot) never disturb a real sequence (run with `pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

from workers.engine.decode_graphs import DecodeGraphs
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.demo import write_demo_checkpoint
from workers.model.loader import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    write_demo_checkpoint(d)
    model, _ = load_model(d, "cuda")  # bf16 weights; the router's fp32 buffers stay fp32
    return model.llm


def prefilled(llm, lens: list[int]) -> tuple[HybridCache, list[int]]:
    cache = HybridCache(llm.config, 8, 4096, 512, "cuda", torch.bfloat16)
    slots = [cache.alloc_slot() for _ in lens]
    cache.reserve(slots, lens)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, llm.config.vocab_size, (sum(lens),), device="cuda", generator=gen)
    llm(llm.embed(ids), ForwardBatch.build(lens, slots, [0] * len(lens), "cuda"), cache)
    return cache, slots


@torch.no_grad()
def test_graph_decode_equals_eager_with_padding(llm):
    lens = [37, 5, 90]  # three sequences replay the size-4 graph: one padding row
    steps = 4
    tokens = torch.randint(0, llm.config.vocab_size, (steps, len(lens)), device="cuda")
    outs = []
    for use_graphs in (False, True):
        cache, slots = prefilled(llm, lens)
        graphs = DecodeGraphs(llm, cache, [1, 4]) if use_graphs else None
        logits = []
        for s in range(steps):
            ctx = [n + s for n in lens]
            cache.reserve(slots, [c + 1 for c in ctx])
            batch = ForwardBatch.build([1] * len(lens), slots, ctx, "cuda")
            ids = tokens[s]
            embeds = llm.embed(ids)
            hidden = graphs.run(embeds, batch) if graphs else llm(embeds, batch, cache)
            logits.append(llm.logits(hidden))
        outs.append(torch.stack(logits))
    eager, graph = outs
    rel = ((graph - eager).norm() / eager.norm()).item()
    print(f"graph vs eager decode logits: rel. error {rel:.2e}")
    assert rel < 1e-3  # padded to 4 rows the MoE may tile differently: not bitwise
