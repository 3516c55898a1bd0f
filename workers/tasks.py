"""The job function: one queued job through the pipeline, its outcome recorded once.

The gateway enqueues `workers.tasks.run_job(job_id)` on the RQ priority queues; the GPU
worker (workers/worker.py) leases the id and calls `run_job(job_id, context, attempt)` in one
of its job threads. This is the job boundary: the only place that catches every exception,
turns it into the job's `error {code, message}` and records it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from service import jobstore
from service.schemas import JobError, JobErrorCode, JobStatus, ModelInfo
from service.storage import Storage
from workers.leases import Lease, LeaseTable
from workers.outcome import error_of, output_of, usage_of

if TYPE_CHECKING:
    from workers.pipeline import Pipeline

log = logging.getLogger("omnibatch.worker")

MAX_ATTEMPTS = 3  # a job that took down its worker this many times is failed, not retried
CANCEL_POLL_S = 0.25  # how stale a cancel flag read at a safe point may be
PROGRESS_EVERY_S = 0.5  # progress writes within one stage are throttled to this


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
    abandon: threading.Event


class _Watch:
    """The job's progress reports (from the pipeline) and its stop check (polled here)."""

    def __init__(self, r: Redis, job_id: str, attempt: Attempt):
        self.r, self.job_id, self.attempt = r, job_id, attempt
        self.cancelled = self.timed_out = False
        self._cancel_checked = 0.0
        self._last_stage, self._last_write = "", 0.0

    def progress(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage == self._last_stage and done < total and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_stage, self._last_write = stage, now
        jobstore.set_progress(self.r, self.job_id, stage, done, total)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if self.attempt.abandon.is_set():
            return True
        if self.attempt.deadline is not None and now > self.attempt.deadline:
            self.timed_out = True
        elif not self.cancelled and now - self._cancel_checked >= CANCEL_POLL_S:
            self._cancel_checked = now
            self.cancelled = jobstore.is_cancel_requested(self.r, self.job_id)
        return self.cancelled or self.timed_out


def job_timeout_s(r: Redis, job_id: str) -> float | None:
    """The timeout the gateway gave the RQ job; None when RQ holds no such job."""
    try:
        return Job.fetch(job_id, connection=r).timeout
    except NoSuchJobError:
        return None


def run_job(job_id: str, ctx: JobContext, attempt: Attempt) -> JobStatus | None:
    """Run one leased job; returns the status it finished with, None when it was not ours to
    finish (deleted, cancelled before it started, given back, or finished elsewhere)."""
    r = ctx.redis
    rec = jobstore.load(r, job_id)  # validates the stored request against JobCreate again
    if rec is None:
        ctx.leases.finish(attempt.lease)
        return None
    if attempt.lease.attempts > MAX_ATTEMPTS:
        lost = JobError(
            code=JobErrorCode.worker_lost,
            message=f"the worker running this job was lost {MAX_ATTEMPTS} times",
        )
        return _record(ctx, attempt, JobStatus.failed, error=lost)
    if not jobstore.mark_running(r, job_id, ctx.worker_id):
        ctx.leases.finish(attempt.lease)
        return None

    watch = _Watch(r, job_id, attempt)
    result, error = None, None
    job = ctx.pipeline.submit(rec.request, ctx.storage.root / rec.input, watch.progress)
    try:
        while not job.wait(CANCEL_POLL_S / 2):  # the flag itself is read every CANCEL_POLL_S
            if not job.cancelled and watch.should_stop():
                job.cancel()  # it stops at its next safe point and keeps what finished
    except BaseException:  # the stop check failed (Redis): no job left running unwatched
        job.cancel()
        raise
    try:
        result = job.result()
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
    if result is None:
        return _record(ctx, attempt, status, error=error)
    return _record(
        ctx, attempt, status, error=error, output=output_of(result), usage=usage_of(result)
    )


def _record(ctx: JobContext, attempt: Attempt, status: JobStatus, **outcome) -> JobStatus | None:
    """Finish the job exactly once: only while this attempt still holds the lease, and only
    if no other attempt finished it first (jobstore.finish is a compare-and-set)."""
    job_id = attempt.lease.job_id
    if not ctx.leases.holds(attempt.lease):
        log.warning("job %s: lease lost before finishing; another attempt owns it", job_id)
        return None
    finished = jobstore.finish(ctx.redis, ctx.storage, job_id, status, model=ctx.model, **outcome)
    ctx.leases.finish(attempt.lease)
    if not finished:
        return None
    log.info("job %s %s", job_id, status.value)
    return status
