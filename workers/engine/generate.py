"""Synchronous generation for a fixed set of prompts: the engine's scheduler and runner,
driven to completion on the calling thread, with no media and no threads (tests).

The threaded `Engine` serves the worker; both use the same Scheduler and ModelRunner, so a
request computes the same tokens whichever way it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from workers.engine.request import Request, SamplingParams
from workers.engine.runner import ModelRunner
from workers.engine.sampler import make_generator
from workers.engine.scheduler import Scheduler, SchedulerConfig
from workers.model.cache import HybridCache
from workers.model.nemotron_h import NemotronH


@dataclass
class Generation:
    ids: list[int]
    finish_reason: str  # "stop", "length" or "cancelled"


@torch.no_grad()
def generate(
    llm: NemotronH,
    prompts: list[torch.Tensor],
    params: list[SamplingParams],
    cancelled: Callable[[], bool] = lambda: False,
    prefill_chunk: int = 8192,
) -> list[Generation]:
    """prompts: per request [L, D] embeddings (model dtype/device) -> generated ids per request.

    Stop ids end a sequence and are not part of its output. `cancelled` is polled every step.
    """
    device = llm.device
    totals = [p.shape[0] + sp.max_tokens for p, sp in zip(prompts, params, strict=True)]
    dtype = llm.embeddings.weight.dtype
    cache = HybridCache(
        llm.config, len(prompts), sum(totals), max(totals), device, dtype, llm.kv_dtype
    )
    scheduler = Scheduler(SchedulerConfig(prefill_token_budget=prefill_chunk), cache)
    runner = ModelRunner(llm, cache)
    reqs = [
        Request(f"g{i}", p, sp, generator=make_generator(sp, device))
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True))
    ]
    for r in reqs:
        scheduler.add(r)
    while scheduler.has_work():
        if cancelled():
            for r in reqs:
                scheduler.cancel(r.rid)
            break
        plan = scheduler.schedule()
        scheduler.update(plan, runner.step(plan))
    return [Generation(r.output_ids, r.finish_reason) for r in reqs]
