"""Executes a scheduler StepPlan on the LLM: decode forward, packed prefill forwards, sampling.

Decode and prefill run as separate forwards because `ForwardBatch.is_decode` selects the
one-token kernels (state update, conv update, paged decode attention) for the whole batch.
Decode batches of a captured size replay a CUDA graph (`DecodeGraphs`). A step's prompt
chunks share one forward unless their workspace (`StageCosts.prefill`: tokens and
sequences) would pass the runner's `workspace`, then they run as several.
The engine calls the stages one by one (`decode`, `fill_masks`, `prefill`, `sample`), so it
can recover from an out-of-memory in any of them; `step` runs them in a row (generate.py).
Structured-output rows (grammar.py): their token masks are filled on the CPU while the decode
forward runs (launched asynchronously just before), once a step, and applied to the logits,
outside the graph, right before sampling (in whatever row groups sampling runs).
Each stage's work is counted in a `StageStats` (benchmarks).
"""

from __future__ import annotations

import torch

from workers.engine.decode_graphs import DecodeGraphs
from workers.engine.grammar import StepMasks, TokenMasks
from workers.engine.request import Request, SamplingParams
from workers.engine.sampler import sample
from workers.engine.scheduler import PrefillChunk, StepPlan
from workers.engine.stats import StageStats
from workers.engine.workspace import StageCosts
from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.nemotron_h import NemotronH


class ModelRunner:
    def __init__(
        self,
        llm: NemotronH,
        cache: HybridCache,
        graphs: DecodeGraphs | None = None,
        stats: StageStats | None = None,
        costs: StageCosts | None = None,
        workspace: int | None = None,
    ):
        self.llm = llm
        self.cache = cache
        self.device = llm.device
        self.graphs = graphs
        self.stats = stats or StageStats()
        self.costs, self.workspace = costs, workspace  # None: every step one prefill forward
        self.masks = TokenMasks(cache.num_slots, llm.config.vocab_size, self.device)
        self._step_masks: StepMasks | None = None  # this step's, from fill_masks

    @torch.no_grad()
    def step(self, plan: StepPlan) -> dict[str, int]:
        """Compute `plan`; return the sampled next token of every request that has one."""
        reqs, hidden = self._forward(plan, constrain=True)
        return self.sample(reqs, hidden) if reqs else {}

    @torch.no_grad()
    def logits(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """Compute `plan`; next-token logits [n, V] fp32 of the requests that sample now:
        every decode request, then every request whose prompt this step completes (unmasked)."""
        reqs, hidden = self._forward(plan, constrain=False)
        return reqs, self.llm.logits(hidden) if reqs else torch.empty(0)

    def _forward(self, plan: StepPlan, constrain: bool) -> tuple[list[Request], torch.Tensor]:
        """(requests that sample now, their last hidden rows [n, D])."""
        reqs, hidden = [], []
        if plan.decode:
            reqs += plan.decode
            hidden.append(self.decode(plan.decode))
        self.fill_masks(plan.sampling if constrain else [])
        if plan.prefill:
            done, h = self.prefill(plan.prefill)
            reqs += done
            hidden.append(h)
        return reqs, torch.cat(hidden) if reqs else torch.empty(0)

    @torch.no_grad()
    def decode(self, reqs: list[Request]) -> torch.Tensor:
        """One new token for each of `reqs` -> their hidden rows [n, D]."""
        with self.stats.stage("decode", self.device):
            slots = [r.slot for r in reqs]
            context = [r.num_computed for r in reqs]
            self.cache.reserve(slots, [n + 1 for n in context])
            embeds = self.llm.embed(torch.tensor([r.output_ids[-1] for r in reqs]))
            batch = ForwardBatch.build([1] * len(reqs), slots, context, self.device)
            if self.decode_is_atomic(len(reqs)):
                hidden = self.graphs.run(embeds, batch)
            else:
                hidden = self.llm(embeds, batch, self.cache)
        self.stats.decode_tokens += len(reqs)
        self.stats.decode_steps += 1
        return hidden

    def decode_is_atomic(self, n: int) -> bool:
        """Whether a decode of n sequences replays a CUDA graph, which allocates nothing: an
        out-of-memory can then only come before any cache state changed."""
        return self.graphs is not None and self.graphs.covers(n)

    @torch.no_grad()
    def prefill(self, chunks: list[PrefillChunk]) -> tuple[list[Request], torch.Tensor]:
        """Prompt chunks -> (requests whose prompt completes, their last hidden rows)."""
        done, rows = [], []
        for part in self._forwards(chunks):
            with self.stats.stage("prefill", self.device):
                d, h = self._prefill(part)
            self.stats.prefill_tokens += sum(c.length for c in part)
            self.stats.prefill_forwards += 1
            done += d
            rows.append(h)
        return done, torch.cat(rows)

    @torch.no_grad()
    def warm_up(self, sizes: list[int]) -> None:
        """A prefill forward of each token count (zero embeddings) in a slot taken for it and
        freed after (not the cache's `scratch_slot`, whose row table prefill cannot grow):
        kernels whose tiling follows the token count compile now."""
        slot = self.cache.alloc_slot()
        try:
            for n in sizes:
                embeds = torch.zeros(n, self.llm.config.hidden_size, device=self.device,
                                     dtype=self.llm.embeddings.weight.dtype)  # fmt: skip
                req = Request("warm-up", embeds, SamplingParams())
                req.slot = slot
                self.cache.clear_state(slot)
                self._prefill([PrefillChunk(req, 0, n)])
        finally:
            self.cache.free_slot(slot)

    def _forwards(self, chunks: list[PrefillChunk]) -> list[list[PrefillChunk]]:
        """The chunks in runs whose forward fits the workspace (one chunk at least)."""
        if self.costs is None:
            return [chunks]
        parts, cur, tokens = [], [], 0
        for c in chunks:
            if cur and self.costs.prefill(tokens + c.length, len(cur) + 1) > self.workspace:
                parts.append(cur)
                cur, tokens = [], 0
            cur.append(c)
            tokens += c.length
        return parts + [cur]

    def _prefill(self, chunks: list[PrefillChunk]) -> tuple[list[Request], torch.Tensor]:
        """Packed prompt chunks -> (requests whose prompt completes, their last hidden rows)."""
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

    def fill_masks(self, reqs: list[Request]) -> None:
        """This step's token masks of the structured requests among `reqs` (those that sample
        now): each grammar takes the token sampled last, once a step, so the engine calls this
        once, after launching the decode forward and before the prefill's host work (which
        waits for the device)."""
        self._step_masks = self.masks.fill(reqs)

    @torch.no_grad()
    def sample(self, reqs: list[Request], hidden: torch.Tensor) -> dict[str, int]:
        """LM head and sampling of `reqs`' hidden rows [n, D] -> next token per request id;
        structured rows masked by this step's `fill_masks`."""
        with self.stats.stage("sample", self.device):
            logits = self.llm.logits(hidden)
            self._apply_masks(logits, reqs)
            tokens = sample(logits, [r.params for r in reqs], [r.generator for r in reqs])
            self.stats.sampled_tokens += len(reqs)
            return dict(zip((r.rid for r in reqs), tokens.tolist(), strict=True))

    def _apply_masks(self, logits: torch.Tensor, reqs: list[Request]) -> None:
        """Mask the logits rows [n, V] of `reqs` that have a mask this step."""
        masks = self._step_masks
        if masks is None:
            return
        rows, picks = [], []
        for i, r in enumerate(reqs):
            k = masks.index.get(r.rid)
            if k is not None:
                rows.append(i)
                picks.append(k)
        if not rows:
            return
        bits = masks.bits
        if picks != list(range(len(masks.index))):  # a subset or another order (a row group)
            bits = bits[torch.tensor(picks, device=bits.device)]
        ops.mask_logits(logits, bits, torch.tensor(rows, device=logits.device))
