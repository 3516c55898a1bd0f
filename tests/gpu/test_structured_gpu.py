"""Structured output on the GPU (run with `pytest -m gpu`): the mask kernel equals its
reference at the full vocabulary, and the engine with CUDA-graph decode (masks filled while
the graph runs, applied outside it) answers every test schema with valid JSON."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from contract.json_grammar import json_grammar
from kernels.token_bitmask import mask_logits, mask_logits_ref
from tests.engine.structured_schemas import SCHEMAS
from workers.engine.engine import Engine, EngineConfig, Prepared
from workers.engine.grammar import GrammarCompiler
from workers.engine.request import SamplingParams
from workers.model.demo import write_demo_checkpoint
from workers.model.loader import load_model
from workers.model.prompt import PromptBuilder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize(("B", "V", "W"), [(256, 131072, 4096), (7, 131072, 16), (33, 1000, 32)])
def test_mask_kernel_matches_reference(B, V, W):
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(B, V, device="cuda", generator=g)
    rows = torch.randperm(B, device="cuda", generator=g)[: max(1, B // 2)]
    bits = torch.randint(-(2**31), 2**31 - 1, (rows.numel(), W), device="cuda", generator=g)
    bits = bits.to(torch.int32)
    got, ref = logits.clone(), logits.clone()
    mask_logits(got, bits, rows)
    mask_logits_ref(ref, bits, rows)
    assert torch.equal(got, ref)


def test_engine_with_decode_graphs_answers_valid_json(tmp_path):
    write_demo_checkpoint(tmp_path)
    model, info = load_model(tmp_path, "cuda")
    pb = PromptBuilder.from_dir(tmp_path)
    stop = tuple(sorted(set(info.generation.eos_token_ids) | {info.model.llm.eos_token_id}))
    compiler = GrammarCompiler(pb.tokenizer.to_str(), model.config.llm.vocab_size, stop)
    cfg = EngineConfig(max_running=64, kv_capacity_tokens=1 << 16, max_seq_len=4096,
                       decode_graph_sizes=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
    eng = Engine(model, pb.tokenizer, cfg).start()
    prompt = pb.render([], "Answer in JSON.", thinking=False)
    cases = [(name, seed) for name in SCHEMAS for seed in (1, 2)]
    try:
        futures = [
            eng.submit(Prepared(
                prompt, [], SamplingParams(max_tokens=400, temperature=1.0, seed=seed,
                                           stop_ids=stop),
                0.5, grammar=compiler.compile(json_grammar(SCHEMAS[name], strict=True)),
            ))
            for name, seed in cases
        ]  # fmt: skip
        reqs = [f.result(timeout=300)[0] for f in futures]
    finally:
        eng.close()
    assert eng.runner.graphs is not None and len(eng.runner.masks.fill_s) > 0
    for (name, _), req in zip(cases, reqs, strict=True):
        assert req.finish_reason == "stop", (name, pb.decode(req.output_ids))
        jsonschema.validate(json.loads(pb.decode(req.output_ids)), SCHEMAS[name])
