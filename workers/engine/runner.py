"""Executes a scheduler StepPlan on the LLM: one decode forward, one packed prefill forward.

Decode and prefill run as two forwards because `ForwardBatch.is_decode` selects the
one-token kernels (state update, conv update, paged decode attention) for the whole batch.
Decode batches of a captured size replay a CUDA graph (`DecodeGraphs`).
Structured-output rows (grammar.py): their token masks are filled on the CPU while the decode
forward runs (launched asynchronously just before), and applied to the logits, outside the
graph, right before sampling.
Each stage's work is counted in a `StageStats` (benchmarks).
"""

from __future__ import annotations

import torch

from workers.engine.cache import ForwardBatch, HybridCache
from workers.engine.decode_graphs import DecodeGraphs
from workers.engine.grammar import StepMasks, TokenMasks
from workers.engine.request import Request
from workers.engine.sampler import sample
from workers.engine.scheduler import StepPlan
from workers.engine.stats import StageStats
from workers.model import ops
from workers.model.nemotron_h import NemotronH


class ModelRunner:
    def __init__(
        self,
        llm: NemotronH,
        cache: HybridCache,
        graphs: DecodeGraphs | None = None,
        stats: StageStats | None = None,
    ):
        self.llm = llm
        self.cache = cache
        self.device = llm.embeddings.weight.device
        self.graphs = graphs
        self.stats = stats or StageStats()
        self.masks = TokenMasks(cache.num_slots, llm.config.vocab_size, self.device)

    @torch.no_grad()
    def step(self, plan: StepPlan) -> dict[str, int]:
        """Compute `plan`; return the sampled next token of every request that has one."""
        reqs, hidden, masks = self._forward(plan, constrain=True)
        if not reqs:
            return {}
        with self.stats.stage("sample", self.device):
            logits = self.llm.logits(hidden)
            if masks is not None:
                ops.mask_logits(logits, masks.bits, masks.rows)
            tokens = sample(logits, [r.params for r in reqs], [r.generator for r in reqs])
            self.stats.sampled_tokens += len(reqs)
            return dict(zip((r.rid for r in reqs), tokens.tolist(), strict=True))

    @torch.no_grad()
    def logits(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """Compute `plan`; next-token logits [n, V] fp32 of the requests that sample now:
        every decode request, then every request whose prompt this step completes (unmasked)."""
        reqs, hidden, _ = self._forward(plan, constrain=False)
        return reqs, self.llm.logits(hidden) if reqs else torch.empty(0)

    def _forward(
        self, plan: StepPlan, constrain: bool
    ) -> tuple[list[Request], torch.Tensor, StepMasks | None]:
        """(requests that sample now, their last hidden rows [n, D], their token masks).

        The masks are filled once the decode forward is queued and before the prefill's host
        work, which waits for the device (building its batch copies to it)."""
        reqs, hidden = [], []
        if plan.decode:
            reqs += plan.decode
            with self.stats.stage("decode", self.device):
                hidden.append(self._decode(plan.decode))
            self.stats.decode_tokens += len(plan.decode)
            self.stats.decode_steps += 1
        masks = self.masks.fill(plan.sampling) if constrain else None
        if plan.prefill:
            with self.stats.stage("prefill", self.device):
                done, h = self._prefill(plan)
            self.stats.prefill_tokens += sum(c.length for c in plan.prefill)
            reqs += done
            hidden.append(h)
        return reqs, torch.cat(hidden) if reqs else torch.empty(0), masks

    def _decode(self, reqs: list[Request]) -> torch.Tensor:
        slots = [r.slot for r in reqs]
        context = [r.num_computed for r in reqs]
        self.cache.reserve(slots, [n + 1 for n in context])
        ids = torch.tensor([r.output_ids[-1] for r in reqs], device=self.device)
        batch = ForwardBatch.build([1] * len(reqs), slots, context, self.device)
        if self.graphs is not None and self.graphs.covers(len(reqs)):
            return self.graphs.run(ids, batch)
        return self.llm(self.llm.embed(ids), batch, self.cache)

    def _prefill(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """Packed prompt chunks -> (requests whose prompt completes, their last hidden rows)."""
        chunks = plan.prefill
        slots = [c.request.slot for c in chunks]
        self.cache.reserve(slots, [c.start + c.length for c in chunks])
        embeds = torch.cat([c.request.prompt_embeds[c.start : c.start + c.length] for c in chunks])
        lens, starts = [c.length for c in chunks], [c.start for c in chunks]
        batch = ForwardBatch.build(lens, slots, starts, self.device)
        if batch.is_decode:  # every chunk one token long: still prompt rows, not decode
            batch = ForwardBatch(batch.cu_seqlens, batch.slots, batch.context_lens, False)
        hidden = self.llm(embeds, batch, self.cache)
        last = [i for i, c in enumerate(chunks) if c.is_last]
        ends = batch.cu_seqlens[1:].long() - 1
        return [chunks[i].request for i in last], hidden[ends[last]]
