"""CUDA graphs for decode steps: one captured forward per batch size bucket.

A decode step of the 52-layer model is thousands of small launches; replaying a captured
graph removes the host from the loop. A batch is padded up to the next captured size with
rows that point at the cache's scratch slot (never handed to a request), so their state
writes land where nobody reads them.
"""

from __future__ import annotations

import bisect

import torch

from workers.model.cache import ForwardBatch, HybridCache
from workers.model.nemotron_h import NemotronH


class DecodeGraphs:
    def __init__(self, llm: NemotronH, cache: HybridCache, sizes: list[int]):
        self.llm, self.cache = llm, cache
        self.sizes = sorted(sizes)
        dev = llm.device
        n = self.sizes[-1]
        self.scratch = cache.scratch_slot
        # Embeddings, not ids, enter the graph: the table may be in host memory (embed).
        self.embeds = llm.embed(torch.zeros(n, dtype=torch.int64))
        self.slots = torch.full((n,), self.scratch, dtype=torch.int64, device=dev)
        self.context = torch.zeros(n, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        pool = torch.cuda.graph_pool_handle()
        # One side stream for every warm-up: each stream that runs a matmul keeps a cuBLAS
        # workspace for good (tens of MiB on Hopper).
        stream = torch.cuda.Stream()
        for size in reversed(self.sizes):  # largest first: smaller graphs reuse its memory
            batch = self._batch(size)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up: autotuning and lazy init outside capture
                for _ in range(2):
                    llm(self.embeds[:size], batch, cache)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = llm(self.embeds[:size], batch, cache)
            self.graphs[size] = graph

    def _batch(self, size: int) -> ForwardBatch:
        cu = torch.arange(size + 1, dtype=torch.int32, device=self.embeds.device)
        return ForwardBatch(cu, self.slots[:size], self.context[:size], is_decode=True)

    def covers(self, n: int) -> bool:
        return n <= self.sizes[-1]

    def run(self, embeds: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """embeds [B, D] of a decode batch -> hidden [B, D] (a view into the graph's output)."""
        n = embeds.shape[0]
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.embeds[:n] = embeds
        self.slots[:n] = batch.slots
        self.context[:n] = batch.context_lens
        self.slots[n:size] = self.scratch
        self.context[n:size] = 0
        self.graphs[size].replay()
        return self.outputs[size][:n]
