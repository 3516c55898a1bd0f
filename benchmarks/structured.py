"""Decode throughput with a JSON schema on every sequence vs without (GPU; `--small` on CPU).

    python -m benchmarks.structured [--batch 256] [--ctx 1024] [--steps 32] [--tokenizer FILE]

The full-size LLM with random bf16 weights decodes `batch` sequences of `ctx` cached tokens
through the engine's ModelRunner (CUDA-graph decode, masks filled while the graph runs,
applied before sampling), in alternating blocks of `steps` steps: free, structured, free,
structured. Every structured row carries one of the test schemas (tests/engine/
structured_schemas.py, round robin; `--schemas` picks some); a row whose JSON is complete
samples a stop token and starts a fresh JSON, so all rows stay constrained every step.

The tokenizer is the demo checkpoint's (512 tokens) unless `--tokenizer` names a real
tokenizer.json: the logits are 131072 wide, the masks cover all of them, and a token past
the tokenizer's vocabulary is never allowed (checked: `foreign_tokens.structured` must be
0). A 512-token vocabulary makes the masks far cheaper than the real 131k one (a 131k-token
BPE measured ~13 ms a step on one core at batch 256 while this was designed): rerun with the
real tokenizer.json when it is at hand.

Reports per mode the median step time and tokens/s, the ratio (acceptance: >= 0.9), the masks'
CPU time per step (consume + fill, mean / p50 / p99), and how many finished JSONs parsed and
validated. Short table last; JSON to $OUT/structured.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import jsonschema
import torch
from tokenizers import Tokenizer

from contract.json_grammar import json_grammar
from tests.engine.structured_schemas import SCHEMAS
from workers.engine.grammar import GrammarCompiler
from workers.engine.request import Request, RequestState, SamplingParams
from workers.engine.runner import ModelRunner
from workers.engine.scheduler import StepPlan
from workers.model.cache import HybridCache
from workers.model.config import LLMConfig
from workers.model.demo import VOCAB_SIZE, demo_config_dict
from workers.model.demo_tokenizer import build_tokenizer
from workers.model.fullsize import build_fullsize
from workers.model.hf_config import parse_omni

STOP_IDS = (2, 11)  # the demo tokenizer's </s> and <|im_end|> (the real checkpoint's too)


def build(args):
    """(llm, device, the DecodeGraphs class or None, tokenizer.json text)."""
    if args.small:  # CPU smoke run: the demo LLM with the full vocabulary, random fp32 weights
        config = replace(parse_omni(demo_config_dict()).llm, vocab_size=LLMConfig().vocab_size)
        llm, graphs = build_fullsize(config, "cpu", torch.float32), None
    else:
        from workers.engine.decode_graphs import DecodeGraphs

        llm, graphs = build_fullsize(), DecodeGraphs
    if args.tokenizer:
        return llm, llm.device, graphs, Path(args.tokenizer).read_text()
    text = build_tokenizer(VOCAB_SIZE).to_str()
    return llm, llm.device, graphs, text


class Rows:
    """`batch` decoding sequences with `ctx` cached random tokens, in slots 0..batch-1."""

    def __init__(self, llm, batch: int, ctx: int, room: int, temperature: float):
        dev, dtype = llm.embeddings.weight.device, llm.embeddings.weight.dtype
        self.cache = HybridCache(llm.config, batch, batch * (ctx + room), ctx + room, dev, dtype)
        for pool in (*self.cache.k_pool, *self.cache.v_pool):
            pool.normal_(0, 1)
        params = SamplingParams(max_tokens=1 << 30, temperature=temperature, stop_ids=STOP_IDS)
        self.reqs = []
        for b in range(batch):
            req = Request(f"r{b}", torch.empty(ctx, 0), params, state=RequestState.DECODE)
            req.slot = self.cache.alloc_slot()
            req.num_computed = ctx
            req.output_ids = [32 + b % 256]  # an ordinary token of either tokenizer
            self.reqs.append(req)
        self.cache.reserve([r.slot for r in self.reqs], [ctx] * batch)


def run_block(runner, rows: Rows, steps: int, fresh) -> tuple[list[float], list[str]]:
    """`steps` decode steps of every row → (step ms, [(row, ids of a JSON finished meanwhile)]).

    fresh(b): a new grammar for row b (None: free decoding)."""
    times, done, starts = [], [], {}

    def restart(b: int, req: Request) -> None:
        req.grammar = fresh(b)
        if req.grammar is not None:  # it reads the output from here on
            req.grammar.consumed = starts[b] = len(req.output_ids)

    for b, req in enumerate(rows.reqs):
        restart(b, req)
    plan = StepPlan(decode=rows.reqs)
    for _ in range(steps):
        t0 = time.perf_counter()
        sampled = runner.step(plan)  # ends in .tolist(): the device is done
        times.append((time.perf_counter() - t0) * 1e3)
        for b, req in enumerate(rows.reqs):
            token = sampled[req.rid]
            req.num_computed += 1
            req.output_ids.append(token)
            if req.grammar is not None and token in STOP_IDS:  # a whole JSON: start another
                done.append((b, req.output_ids[starts[b] : -1]))
                restart(b, req)
    return times, done


def summary(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"mean": statistics.fmean(s), "p50": s[len(s) // 2], "p99": s[int(0.99 * (len(s) - 1))]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=32, help="steps per block (4 blocks)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--tokenizer", help="a tokenizer.json (default: the demo tokenizer)")
    ap.add_argument("--small", action="store_true", help="the demo LLM on the CPU (smoke run)")
    ap.add_argument("--schemas", help="comma-separated names of the test schemas (default: all)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t_build = time.perf_counter()
    llm, device, graph_cls, tok_json = build(args)
    vocab = llm.config.vocab_size
    compiler = GrammarCompiler(tok_json, vocab, STOP_IDS)
    tok_vocab = Tokenizer.from_str(tok_json).get_vocab_size(with_added_tokens=True)
    names = args.schemas.split(",") if args.schemas else list(SCHEMAS)
    grammars = {n: json_grammar(SCHEMAS[n], strict=True) for n in names}
    rows = Rows(llm, args.batch, args.ctx, 4 * args.steps + 16, args.temperature)
    graphs = graph_cls(llm, rows.cache, [args.batch]) if graph_cls else None
    runner = ModelRunner(llm, rows.cache, graphs)
    print(f"built in {time.perf_counter() - t_build:.0f} s; vocab {vocab}, tokenizer {tok_vocab}")

    free = lambda b: None
    constrained = lambda b: compiler.compile(grammars[names[b % len(names)]])
    warm = min(4, args.steps)
    run_block(runner, rows, warm, free)  # warm-up: autotuning, the first masks
    run_block(runner, rows, warm, constrained)
    runner.masks.fill_s.clear()
    times: dict[str, list[float]] = {"free": [], "structured": []}
    finished: list = []
    foreign = {"free": 0, "structured": 0}  # sampled tokens the tokenizer does not have
    for mode in ("free", "structured", "free", "structured"):
        ms, done = run_block(runner, rows, args.steps, free if mode == "free" else constrained)
        times[mode] += ms
        finished += done
        foreign[mode] += sum(t >= tok_vocab for r in rows.reqs for t in r.output_ids[-args.steps :])
    valid = 0
    for b, ids in finished:
        text = compiler.tokenizer.decode_str(ids)
        try:
            jsonschema.validate(json.loads(text), SCHEMAS[names[b % len(names)]])
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass

    step = {m: summary(t) for m, t in times.items()}
    fill = summary([s * 1e3 for s in runner.masks.fill_s])
    ratio = step["free"]["p50"] / step["structured"]["p50"]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": args.batch, "ctx": args.ctx, "temperature": args.temperature,
        "tokenizer": args.tokenizer or f"demo ({tok_vocab} tokens)", "vocab": vocab,
        "step_ms": step, "fill_cpu_ms": fill,
        "tok_s": {m: args.batch / s["p50"] * 1e3 for m, s in step.items()},
        "throughput_ratio": ratio, "passes": ratio >= 0.9,
        "json_finished": len(finished), "json_valid": valid, "foreign_tokens": foreign,
    }  # fmt: skip
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "structured.json"), "w") as f:
            json.dump(result, f, indent=1)
    print(f"\n{result['device']}, batch {args.batch}, ctx {args.ctx}, {result['tokenizer']}")
    print(f"{'mode':12} {'step ms p50':>12} {'p99':>8} {'tok/s':>9}")
    for m, s in step.items():
        print(f"{m:12} {s['p50']:12.2f} {s['p99']:8.2f} {result['tok_s'][m]:9.0f}")
    print(f"ratio structured / free: {ratio:.3f} (acceptance >= 0.9)")
    print(f"mask consume + fill CPU ms/step: mean {fill['mean']:.2f} p50 {fill['p50']:.2f} "
          f"p99 {fill['p99']:.2f}")  # fmt: skip
    print(f"JSONs finished {len(finished)}, valid {valid}; tokens past the tokenizer's "
          f"vocabulary: free {foreign['free']}, structured {foreign['structured']} (must be 0)")
    return result


if __name__ == "__main__":
    main()
