"""What the engine needs to survive an out-of-memory: its stages as swappable callables, the
error a request gets when even its smallest piece does not fit, and the pieces' shrinking.

The memory plan keeps every stage inside the cap, so a CUDA out-of-memory means something
the plan cannot see (fragmentation, another process on the card). The engine then frees
what the failed attempt held, splits its batch and retries (engine.py): an encode group in
halves, then one request's encoder pieces smaller; a prefill step one request at a time
from its first token, in shrinking chunks; a decode batch (graph replays) in halves; the LM
head and sampling in halves of its rows. Only a request that fails alone at the smallest
piece fails, with `ResourcesExhausted`, and the rest of its batch goes on.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from workers.engine.request import Request
from workers.engine.runner import ModelRunner
from workers.engine.scheduler import PrefillChunk, StepPlan
from workers.engine.stats import StageStats
from workers.model.omni import EncodePieces

OutOfMemory = torch.OutOfMemoryError  # torch.cuda.OutOfMemoryError is the same class
# The smallest prefill piece a request is retried in (one SSD chunk).
MIN_PREFILL_PIECE = 128
# Encoder pieces shrink this much per retry, down to one sequence / clip / frame.
SHRINK = 4


class ResourcesExhausted(RuntimeError):
    """A request that does not fit in the worker's GPU memory even alone, in the smallest
    pieces: the job fails with error code `resources_exhausted` (docs/api.md)."""

    code = "resources_exhausted"

    def __init__(self, stage: str):
        self.message = (
            f"the input needs more GPU memory than this worker has free ({stage}, even alone "
            "and in the smallest pieces); use a shorter time range, fewer frames or a lower "
            "resolution, or a worker with more GPU memory"
        )
        super().__init__(self.message)


@dataclass
class Stages:
    """The engine's stages; it calls each through here, so a test can wrap one with a
    callable that raises `OutOfMemory` and watch the engine's own recovery.

    encode(group, pieces) -> per request (embeds, PromptStats) or the exception it raised
    prefill(chunks) -> (requests whose prompt completed, their last hidden rows)
    decode(requests) -> hidden rows;  sample(requests, hidden) -> {rid: token}
    """

    encode: Callable
    prefill: Callable
    decode: Callable
    sample: Callable


def release_memory(device: torch.device, stats: StageStats, stage: str) -> None:
    """After an out-of-memory in `stage` (counted in `stats`): collect what the failed attempt
    left in reference cycles and give the allocator's cached blocks back, so the retry finds
    whole segments. (The attempt's tensors themselves went with its frames.)"""
    stats.count_oom(stage)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def smaller_pieces(p: EncodePieces) -> EncodePieces | None:
    """The next, smaller encoder pieces; None once all are the smallest (a forward of one
    sequence, one clip, a resize of one frame)."""
    if p.vit_tokens <= 1 and p.audio_frames <= 1 and p.resize_bytes <= 1:
        return None
    return replace(
        p,
        vit_tokens=max(1, p.vit_tokens // SHRINK),
        audio_frames=max(1, p.audio_frames // SHRINK),
        resize_bytes=max(1, p.resize_bytes // SHRINK),
    )


class RecoveringStep:
    """One scheduler step through the stages: decode, the structured rows' token masks,
    prefill, then the LM head and sampling of every request that samples, each recovered
    from an out-of-memory as the module docstring says. `fail(request, error)` takes a
    request out of the step for good."""

    def __init__(
        self,
        stages: Stages,
        runner: ModelRunner,
        sample_rows: int,
        prefill_budget: int,
        fail: Callable[[Request, Exception], None],
        stats: StageStats,
    ):
        self.stages, self.runner, self.fail, self.stats = stages, runner, fail, stats
        self.sample_rows, self.prefill_budget = sample_rows, prefill_budget
        self.device = runner.device
        self.decode_is_atomic = runner.decode_is_atomic  # (batch size) -> a graph replay?

    def run(self, plan: StepPlan) -> dict[str, int]:
        """-> the sampled next token of every request of `plan` that has one and did not fail."""
        reqs, hidden = [], []
        if plan.decode:
            done, h = self._decode(plan.decode)
            reqs += done
            hidden += [h] if done else []
        # once a step, while the decode forward runs (grammars take last step's tokens)
        self.runner.fill_masks(plan.sampling)
        if plan.prefill:
            done, h = self._prefill(plan.prefill)
            reqs += done
            hidden += [h] if done else []
        return self._sample(reqs, torch.cat(hidden)) if reqs else {}

    def _decode(self, reqs: list[Request]) -> tuple[list[Request], torch.Tensor]:
        """Decode forward; after an out-of-memory, in halves. Only a graph replay can be
        retried: it allocates nothing, so the error came before any state changed. An eager
        forward may have advanced some layers' state, so its sequences fail."""
        try:
            return reqs, self.stages.decode(reqs)
        except OutOfMemory:
            pass
        release_memory(self.device, self.stats, "decode")
        if len(reqs) == 1 or not self.decode_is_atomic(len(reqs)):
            for r in reqs:
                self.fail(r, ResourcesExhausted("decode"))
            return [], torch.empty(0)
        done, rows = [], []
        for half in (reqs[: len(reqs) // 2], reqs[len(reqs) // 2 :]):
            d, h = self._decode(half)
            done += d
            rows += [h.clone()] if d else []  # a graph's output: the next replay overwrites it
        return done, torch.cat(rows) if rows else torch.empty(0)

    def _prefill(self, chunks: list[PrefillChunk]) -> tuple[list[Request], torch.Tensor]:
        """Prefill forward(s); after an out-of-memory, each request alone (`_prefill_alone`)."""
        try:
            return self.stages.prefill(chunks)
        except OutOfMemory:
            pass
        release_memory(self.device, self.stats, "prefill")
        done, rows = [], []
        for chunk in chunks:
            d, h = self._prefill_alone(chunk)
            done += d
            rows += [h] if d else []
        return done, torch.cat(rows) if rows else torch.empty(0)

    def _prefill_alone(self, chunk: PrefillChunk) -> tuple[list[Request], torch.Tensor]:
        """Recompute the chunk's request from its first token to the chunk's end (the failed
        forward may have advanced its state), in pieces that halve after each out-of-memory;
        it fails once even `MIN_PREFILL_PIECE` tokens do not fit."""
        req, end = chunk.request, chunk.start + chunk.length
        piece = max(MIN_PREFILL_PIECE, min(end, self.prefill_budget) // 2)
        while True:
            self.runner.cache.clear_state(req.slot)
            try:
                for start in range(0, end, piece):
                    part = PrefillChunk(req, start, min(piece, end - start))
                    done, h = self.stages.prefill([part])
                return done, h
            except OutOfMemory:
                pass
            release_memory(self.device, self.stats, "prefill")
            if piece <= MIN_PREFILL_PIECE:
                self.fail(req, ResourcesExhausted("prefill"))
                return [], torch.empty(0)
            piece = max(MIN_PREFILL_PIECE, piece // 2)

    def _sample(self, reqs: list[Request], hidden: torch.Tensor) -> dict[str, int]:
        """LM head and sampling in groups of `sample_rows`; after an out-of-memory, in halves
        (seeded generators rewound, so a retried row draws what it would have)."""
        out, i, rows = {}, 0, self.sample_rows
        while i < len(reqs):
            part = reqs[i : i + rows]
            states = [r.generator.get_state() if r.generator else None for r in part]
            try:
                out |= self.stages.sample(part, hidden[i : i + rows])
                i += len(part)
                continue
            except OutOfMemory:
                pass
            release_memory(self.device, self.stats, "sample")
            for r, state in zip(part, states, strict=True):
                if state is not None:
                    r.generator.set_state(state)
            if len(part) > 1:
                rows = len(part) // 2
            else:
                self.fail(part[0], ResourcesExhausted("sampling"))
                i += 1
        return out
