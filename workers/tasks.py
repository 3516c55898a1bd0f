"""The job function: one queued job through the pipeline, its outcome recorded once.

The gateway enqueues `workers.tasks.run_job(job_id)` on the RQ priority queues; the GPU
worker (workers/worker.py) leases the id and calls `run_job(job_id, context, attempt)` in one
of its job threads. This is the job boundary: the only place that catches every exception,
turns it into the job's `error {code, message}` and records it.

A job thread talks to Redis only to read the job and to record its end (both retried while
Redis is away: the worker keeps renewing the lease meanwhile). Progress and the cancel flag
go through the `Attempt`, which the worker's JobWatch syncs with Redis for every job at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import redis
from pydantic import ValidationError
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from contract import jobstore
from contract.schemas import JobError, JobErrorCode, JobStatus, ModelInfo
from contract.storage import Storage
from workers.engine.engine import EngineDead
from workers.leases import Lease, LeaseTable
from workers.outcome import error_of, output_of, usage_of

if TYPE_CHECKING:
    from workers.pipeline import Pipeline

log = logging.getLogger("omnibatch.worker")
T = TypeVar("T")

MAX_ATTEMPTS = 3  # a job that took down its worker this many times is failed, not retried
REDIS_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # waits between tries while Redis is away; then 5 s
STOP_POLL_S = 0.125  # how often a job thread looks at its attempt's cancel/abandon/deadline


@dataclass(frozen=True)
class JobContext:
    """What every job of one worker process shares."""

    redis: Redis
    storage: Storage
    leases: LeaseTable
    pipeline: Pipeline  # loaded once per process
    model: ModelInfo
    worker_id: str


@dataclass
class Attempt:
    lease: Lease
    deadline: float | None  # time.monotonic() past which the job stops with `timeout`
    # Set when this worker gives the job back (shutdown, lost lease): stop, record nothing.
    abandon: threading.Event = field(default_factory=threading.Event)
    # Set by the worker's JobWatch once the job's cancel flag is seen.
    cancel: threading.Event = field(default_factory=threading.Event)
    # The latest (stage, done, total) reported, and the media type the pipeline found on
    # opening the input; JobWatch writes them when they changed.
    progress: tuple[str, int, int] | None = None
    media_type: str | None = None
    recorded: bool = False  # its end is recorded: the lease is about to end, not lost


class _Watch:
    """The pipeline's progress reports and the job thread's stop check. Neither touches
    Redis: they read and write the attempt."""

    def __init__(self, attempt: Attempt):
        self.attempt = attempt
        self.cancelled = self.timed_out = False

    def progress(self, stage: str, done: int, total: int) -> None:
        self.attempt.progress = (stage, done, total)

    def should_stop(self) -> bool:
        a = self.attempt
        if a.abandon.is_set():
            return True
        if a.deadline is not None and time.monotonic() > a.deadline:
            self.timed_out = True
        self.cancelled = self.cancelled or a.cancel.is_set()
        return self.cancelled or self.timed_out


def job_timeout_s(r: Redis, job_id: str) -> float | None:
    """The timeout the gateway gave the RQ job; None when RQ holds no such job."""
    try:
        return Job.fetch(job_id, connection=r).timeout
    except NoSuchJobError:
        return None


def retrying(attempt: Attempt, what: str, fn: Callable[..., T], /, *args, **kwargs) -> T:
    """`fn(*args)`, tried again on Redis errors (a restart, a full connection pool) until it
    answers or the attempt is abandoned (then the error propagates)."""
    for n in itertools.count():
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            if attempt.abandon.is_set():
                raise
            wait = REDIS_RETRY_S[min(n, len(REDIS_RETRY_S) - 1)]
            log.warning("job %s: %s: %s; again in %g s", attempt.lease.job_id, what, exc, wait)
            attempt.abandon.wait(wait)


def run_job(job_id: str, ctx: JobContext, attempt: Attempt) -> JobStatus | None:
    """Run one leased job; returns the status it finished with, None when it was not ours to
    finish (deleted, given back, or finished elsewhere)."""
    try:
        rec = retrying(attempt, "reading the job", jobstore.load, ctx.redis, job_id, strict=True)
    except ValidationError as exc:  # stored by a gateway that checked less (an older version)
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        error = JobError(code=JobErrorCode.invalid_request, message=problem[:500])
        return _record(ctx, attempt, JobStatus.failed, error=error)
    if rec is None:
        ctx.leases.release(attempt.lease)
        return None
    if attempt.lease.attempts > MAX_ATTEMPTS:
        lost = JobError(
            code=JobErrorCode.worker_lost,
            message=f"the worker running this job was lost {MAX_ATTEMPTS} times",
        )
        return _record(ctx, attempt, JobStatus.failed, error=lost)
    if attempt.lease.cancel_requested:  # while an attempt that did not finish was running
        error = JobError(code=JobErrorCode.cancelled, message="cancelled while running")
        return _record(ctx, attempt, JobStatus.cancelled, error=error)

    watch = _Watch(attempt)
    result, error = None, None
    job = ctx.pipeline.submit(rec.request, ctx.storage.root / rec.input, watch.progress)
    while not job.wait(STOP_POLL_S):
        attempt.media_type = job.media_type
        if not job.cancelled and watch.should_stop():
            job.cancel()  # it stops at its next safe point and keeps what finished
    try:
        result = job.result()
    except EngineDead:  # not this job's fault: the worker exits and another attempt runs it
        if ctx.leases.release(attempt.lease):
            log.warning("job %s: the engine died; handed back to its queue", job_id)
        return None
    except Exception as exc:  # the job boundary: record whatever went wrong
        error = error_of(exc, job_id)
    if attempt.abandon.is_set():
        return None
    if watch.timed_out:
        error = JobError(code=JobErrorCode.timeout, message="the job ran past its timeout")
    if watch.cancelled:
        status = JobStatus.cancelled
        error = JobError(code=JobErrorCode.cancelled, message="cancelled while running")
    else:
        status = JobStatus.failed if error else JobStatus.succeeded
    outcome = {"error": error, "media_type": job.media_type}
    if result is not None:
        outcome |= {"output": output_of(result), "usage": usage_of(result)}
    return _record(ctx, attempt, status, **outcome)


def _record(ctx: JobContext, attempt: Attempt, status: JobStatus, **outcome) -> JobStatus | None:
    """Finish the job exactly once: only while this attempt is the one running it
    (jobstore.finish is a compare-and-set on the attempt), then end the lease."""
    job_id, lease = attempt.lease.job_id, attempt.lease
    finished = retrying(
        attempt, "recording its end", jobstore.finish, ctx.redis, ctx.storage, job_id, status,
        attempt=lease.token, model=ctx.model, **outcome,
    )  # fmt: skip
    attempt.recorded = True
    # Should this fail, the lease expires and the sweep ends it: the job is finished.
    retrying(attempt, "ending its lease", ctx.leases.release, lease)
    if not finished:
        log.warning("job %s: finished by another attempt, or deleted", job_id)
        return None
    log.info("job %s %s", job_id, status.value)
    return status
