"""Continuous-batching scheduler: pure CPU bookkeeping, no tensors touched.

One rule drives it: every step, hand out tokens until each running request's computed
count catches up with its length. Decoding requests get one token each; the rest of the
step's token budget goes to prompt chunks, oldest request first. A decode forward costs far
less than in proportion to its batch (it streams the touched experts' weights, and 64
sequences already touch 95 % of them), so while prompt chunks are planned a small decode
batch may wait for more sequences: it runs once `decode_min_batch` are ready, when the step
has no prompt work, or after `max_decode_skips` steps without a decode. New requests are admitted
in arrival order while a cache slot is free and their worst-case cache rows
(prompt + max_tokens) fit in the KV budget; the head of the queue is never overtaken, so a
large request cannot starve behind a stream of small ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from workers.engine.request import Request, RequestState


class SlotAllocator(Protocol):
    """The cache's slots and KV rows (HybridCache): a running request holds one slot."""

    num_free_slots: int
    kv_capacity_tokens: int
    max_seq_len: int

    def alloc_slot(self) -> int: ...

    def free_slot(self, slot: int) -> None: ...


@dataclass(frozen=True)
class SchedulerConfig:
    prefill_token_budget: int = 16384  # prompt tokens computed per step
    decode_min_batch: int = 1  # 1: decode every step
    max_decode_skips: int = 4  # bounds how long a ready sequence waits for its next token


@dataclass
class PrefillChunk:
    request: Request
    start: int  # first prompt row of this chunk
    length: int

    @property
    def is_last(self) -> bool:
        """The chunk that completes the prompt: its last row's logits give the first token."""
        return self.start + self.length == self.request.prompt_len


@dataclass
class StepPlan:
    """What the runner computes this step."""

    decode: list[Request] = field(default_factory=list)  # each feeds its last sampled token
    prefill: list[PrefillChunk] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill

    @property
    def sampling(self) -> list[Request]:
        """The requests that sample a token this step, in the runner's logits row order."""
        return self.decode + [c.request for c in self.prefill if c.is_last]


class Scheduler:
    def __init__(self, config: SchedulerConfig, slots: SlotAllocator):
        self.config = config
        self.slots = slots
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order
        self.reserved_tokens = 0
        self.decode_skips = 0  # consecutive steps that planned no decode while one was ready

    def add(self, req: Request) -> None:
        if req.max_total_len > min(self.slots.kv_capacity_tokens, self.slots.max_seq_len):
            self._finish(req, "rejected")
            return
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def unprefilled_tokens(self) -> int:
        """Prompt tokens of waiting and running requests that no prefill has computed yet."""
        return sum(r.prompt_len - r.num_computed for r in (*self.waiting, *self.running)
                   if r.state is not RequestState.DECODE)  # fmt: skip

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        ready = [r for r in self.running if r.state is RequestState.DECODE]
        budget = self.config.prefill_token_budget
        for req in self.running:
            if req.state is RequestState.PREFILL and budget > 0:
                budget -= self._chunk(plan, req, budget)
        while self.waiting and budget > 0 and self._fits(self.waiting[0]):
            req = self.waiting.popleft()
            req.slot = self.slots.alloc_slot()
            req.state = RequestState.PREFILL
            self.reserved_tokens += req.max_total_len
            self.running.append(req)
            budget -= self._chunk(plan, req, budget)
        if ready and (
            not plan.prefill
            or len(ready) >= self.config.decode_min_batch
            or self.decode_skips >= self.config.max_decode_skips
        ):
            plan.decode = ready
            self.decode_skips = 0
        elif ready:
            self.decode_skips += 1
        return plan

    def update(self, plan: StepPlan, sampled: dict[str, int]) -> list[Request]:
        """Advance the requests of `plan` by what the runner computed; return those finished.

        sampled: next token per request id, for decode requests and last prompt chunks.
        """
        done = []
        for req in plan.decode:
            if req.finished:  # cancelled while the step ran
                continue
            req.num_computed += 1
            self._append(req, sampled[req.rid], done)
        for chunk in plan.prefill:
            req = chunk.request
            if req.finished:
                continue
            req.num_computed += chunk.length
            if chunk.is_last:
                req.state = RequestState.DECODE
                self._append(req, sampled[req.rid], done)
        return done

    def cancel(self, rid: str) -> Request | None:
        for req in [*self.waiting, *self.running]:
            if req.rid == rid:
                if req in self.waiting:
                    self.waiting.remove(req)
                self._finish(req, "cancelled")
                return req
        return None

    def _fits(self, req: Request) -> bool:
        return (
            self.slots.num_free_slots > 0
            and self.reserved_tokens + req.max_total_len <= self.slots.kv_capacity_tokens
        )

    def _chunk(self, plan: StepPlan, req: Request, budget: int) -> int:
        length = min(budget, req.prompt_len - req.num_computed)
        plan.prefill.append(PrefillChunk(req, req.num_computed, length))
        return length

    def _append(self, req: Request, token: int, done: list[Request]) -> None:
        p = req.params
        if (
            p.thinking_budget is not None
            and len(req.output_ids) == p.thinking_budget
            and p.think_end_id not in req.output_ids
        ):
            token = p.think_end_id  # reasoning budget spent: close the thinking block
        if token in p.stop_ids and not p.ignore_eos:  # stop ids are not part of the output
            self._finish(req, "stop")
            done.append(req)
            return
        req.output_ids.append(token)
        if len(req.output_ids) >= p.max_tokens:
            # a structured answer that closed on its last allowed token is whole, not cut
            whole = req.grammar is not None and req.grammar.complete(req.output_ids)
            self._finish(req, "stop" if whole else "length")
            done.append(req)

    def _finish(self, req: Request, reason: str) -> None:
        if req in self.running:
            self.running.remove(req)
            self.slots.free_slot(req.slot)
            self.reserved_tokens -= req.max_total_len
        req.state = RequestState.FINISHED
        req.finish_reason = reason
