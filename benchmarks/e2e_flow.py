"""One workload's jobs from files on disk to stored results, CPU decode overlapping the GPU.

Every job is queued at the start. Decodes go to the media pool (one worker per core) as
far ahead of the GPU as host memory allows: the decoded media not yet handed to the engine
stays under `media_bytes` (`MediaBudget`, as in the worker; all 64 W-doc jobs decoded at
once would hold ≈ 50 GB of float pixels). As each decode lands, its units' prompts are
rendered (`PromptBuilder.render`, the pipeline's way) and handed to the engine, at most
`max_requests` at once, since a request's prompt embeddings sit on the GPU from arrival. A
unit's media leaves the budget when the engine lets go of its host copy: on submit (copied
to the GPU), or once encoded (past the engine's upload cap). A job's result is written as
JSON when its last unit finishes.
"""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

from workers.engine.engine import Engine, Prepared
from workers.engine.request import SamplingParams
from workers.media.items import media_bytes
from workers.media_budget import MediaBudget
from workers.media_units import Decoded, host_release
from workers.model.prompt import PromptBuilder, task_text


@dataclass
class _Job:
    path: str
    decoded: Decoded
    cpu_s: float
    calls: list[dict | None] = field(default_factory=list)


class Flow:
    def __init__(
        self,
        workload,
        engine: Engine,
        prompts: PromptBuilder,
        pool,
        files: list[str],
        jobs: int,
        out: Path,
        workers: int,
        media_bytes: int,
        max_requests: int,
    ):
        self.w, self.engine, self.prompts, self.pool = workload, engine, prompts, pool
        self.files, self.jobs, self.out, self.workers = files, jobs, out, workers
        self.max_requests = max_requests
        self.text = task_text(workload.task, workload.prompt, workload.media)
        self.pending: set[Future] = set()
        self.decodes: dict[Future, int] = {}  # in the pool -> job
        self.owner: dict[Future, tuple[int, int]] = {}  # in the engine -> (job, unit)
        self.backlog: deque[tuple[int, int, Prepared]] = deque()
        self.state: dict[int, _Job] = {}
        self.next_job = 0
        self.budget = MediaBudget(media_bytes, first=workers)
        self.first_submit: float | None = None
        self.counts = {"units": 0, "amount": 0.0, "decode_cpu_s": 0.0, "decode_busy_s": 0.0}

    def run(self) -> dict:
        """Run every job; the counts of the run, its wall time among them."""
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self._top_up()
        while self.pending or self.backlog:
            while self.backlog and len(self.owner) < self.max_requests:
                j, k, p = self.backlog.popleft()
                self.owner[self.engine.submit(p)] = (j, k)
                self.state[j].decoded.units[k].items = []  # the engine's now
                self.pending.add(p.future)
                self.first_submit = self.first_submit or time.perf_counter()
            done, self.pending = wait(self.pending, return_when=FIRST_COMPLETED)
            for f in done:
                self._decoded(f) if f in self.decodes else self._finished(f)
            self._top_up()
        wall = time.perf_counter() - t0
        return {
            "wall_s": wall,
            "jobs": self.jobs,
            "pool_workers": self.workers,
            **self.counts,
            "media_exposed_s": self.first_submit - t0,
            "peak_media_gb": self.budget.peak / 1e9,
        }

    def _top_up(self) -> None:
        """Queue decodes while the media budget allows."""
        while self.next_job < self.jobs and self.budget.try_start():
            j, self.next_job = self.next_job, self.next_job + 1
            f = self.pool.submit(self.files[j % len(self.files)], self.w.opts)
            self.decodes[f] = j
            self.pending.add(f)

    def _decoded(self, f: Future) -> None:
        j = self.decodes.pop(f)
        decoded, cpu, busy = f.result()
        self.budget.landed(sum(media_bytes(u.items) for u in decoded.units))
        c = self.counts
        c["units"] += len(decoded.units)
        c["amount"] += self.w.amount(decoded.usage)
        c["decode_cpu_s"] += cpu
        c["decode_busy_s"] += busy  # wall seconds a worker spent on it
        path = self.files[j % len(self.files)]
        self.state[j] = _Job(path, decoded, cpu, [None] * len(decoded.units))
        for k, u in enumerate(decoded.units):
            params = SamplingParams(max_tokens=self.w.max_tokens(u), ignore_eos=True)
            prompt = self.prompts.render(u.items, self.text, False)
            release = host_release(self.budget, self.pool, u.items)  # as the pipeline's
            p = Prepared(prompt, u.items, params, self.w.evs_rate, on_host_release=release)
            self.backlog.append((j, k, p))

    def _finished(self, f: Future) -> None:
        j, k = self.owner.pop(f)
        req, stats = f.result()
        job = self.state[j]
        job.calls[k] = {
            "text": self.prompts.decode(req.output_ids),
            "output_tokens": len(req.output_ids),
            "finish_reason": req.finish_reason,
            **vars(stats),
        }
        if all(c is not None for c in job.calls):
            self._write(j, self.state.pop(j))

    def _write(self, j: int, job: _Job) -> None:
        d = job.decoded
        segments = [
            {"start_s": u.start_s, "end_s": u.end_s, "page": u.page, **c}
            for u, c in zip(d.units, job.calls, strict=True)
        ]
        result = {
            "job": j,
            "input": job.path,
            "kind": d.kind,
            "usage": d.usage,
            "decode_cpu_s": job.cpu_s,
            "segments": segments,
        }
        tmp = self.out / f".job{j:04d}.json"
        tmp.write_text(json.dumps(result))
        tmp.rename(self.out / f"job{j:04d}.json")
