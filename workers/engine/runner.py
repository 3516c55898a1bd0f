"""Executes a scheduler StepPlan on the LLM: one decode forward, one packed prefill forward.

Decode and prefill run as two forwards because `ForwardBatch.is_decode` selects the
one-token kernels (state update, conv update, paged decode attention) for the whole batch.
Decode batches of a captured size replay a CUDA graph (`DecodeGraphs`).
"""

from __future__ import annotations

import torch

from workers.engine.cache import ForwardBatch, HybridCache
from workers.engine.decode_graphs import DecodeGraphs
from workers.engine.request import Request
from workers.engine.sampler import sample
from workers.engine.scheduler import StepPlan
from workers.model.nemotron_h import NemotronH


class ModelRunner:
    def __init__(self, llm: NemotronH, cache: HybridCache, graphs: DecodeGraphs | None = None):
        self.llm = llm
        self.cache = cache
        self.device = llm.embeddings.weight.device
        self.graphs = graphs

    def step(self, plan: StepPlan) -> dict[str, int]:
        """Compute `plan`; return the sampled next token of every request that has one."""
        sampled: dict[str, int] = {}
        if plan.decode:
            sampled |= self._decode(plan.decode)
        if plan.prefill:
            sampled |= self._prefill(plan)
        return sampled

    def _decode(self, reqs: list[Request]) -> dict[str, int]:
        slots = [r.slot for r in reqs]
        context = [r.num_computed for r in reqs]
        self.cache.reserve(slots, [n + 1 for n in context])
        ids = torch.tensor([r.output_ids[-1] for r in reqs], device=self.device)
        batch = ForwardBatch.build([1] * len(reqs), slots, context, self.device)
        if self.graphs is not None and self.graphs.covers(len(reqs)):
            hidden = self.graphs.run(ids, batch)
        else:
            hidden = self.llm(self.llm.embed(ids), batch, self.cache)
        return self._sample(reqs, hidden)

    def _prefill(self, plan: StepPlan) -> dict[str, int]:
        chunks = plan.prefill
        reqs = [c.request for c in chunks]
        slots = [r.slot for r in reqs]
        self.cache.reserve(slots, [c.start + c.length for c in chunks])
        embeds = torch.cat([c.request.prompt_embeds[c.start : c.start + c.length] for c in chunks])
        batch = ForwardBatch.build(
            [c.length for c in chunks], slots, [c.start for c in chunks], self.device
        )
        hidden = self.llm(embeds, batch, self.cache)
        last = [i for i, c in enumerate(chunks) if c.is_last]
        if not last:
            return {}
        ends = batch.cu_seqlens[1:].long() - 1
        return self._sample([reqs[i] for i in last], hidden[ends[last]])

    def _sample(self, reqs: list[Request], hidden: torch.Tensor) -> dict[str, int]:
        """hidden [B, D] last positions -> next token per request."""
        logits = self.llm.logits(hidden)
        tokens = sample(logits, [r.params for r in reqs], [r.generator for r in reqs])
        return dict(zip((r.rid for r in reqs), tokens.tolist(), strict=True))
