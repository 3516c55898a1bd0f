"""Queued jobs that no worker took within `max_queue_age_s` of their submit become `expired`.

Where it happens: a sweep in the gateway's housekeeping (service/housekeeping.py), so a job
expires with no worker running and with nobody reading it, and leaves its queue, freeing the
capacity that `max_queue_depth` guards. It is as punctual as the sweep interval. Age counts
from `created_at`, so a job that went back to its queue after its worker was lost keeps the
age it had.

An expired job ends like any other (jobstore.end_queued: metrics, its input removed, its
retention started). Its webhook, if it asked for one, is sent as `job.expired`: docs/api.md
promises an event "on each terminal status" and lists `expired` among them, and a receiver
that waits for its job's event would otherwise wait for ever; Standard Webhooks receivers
are expected to ignore event types they do not know.
"""

from __future__ import annotations

import time

import redis

from contract import jobstore
from contract.schemas import JOB_QUEUES, JobError, JobErrorCode, JobStatus
from contract.storage import Storage
from service.joblist import queue_key

PAGE = 1000


def _id_time(job_id: str) -> float | None:
    """A job id's creation time (`job_` + 12 hex digits of milliseconds + …); None if not ours."""
    try:
        return int(job_id[4:16], 16) / 1000 if job_id.startswith("job_") else None
    except ValueError:
        return None


def _old_ids(r: redis.Redis, key: str, cutoff: float) -> list[str]:
    """Ids in the queue list `key` minted before `cutoff`. Read whole before anything is
    removed, so that removals cannot shift a page under the reader."""
    old, start = [], 0
    while page := r.lrange(key, start, start + PAGE - 1):
        for raw in page:
            t = _id_time(raw.decode())
            if t is not None and t < cutoff:
                old.append(raw.decode())
        start += PAGE
    return old


def sweep(
    r: redis.Redis, storage: Storage, max_age_s: float, now: float | None = None
) -> list[str]:
    """Expire every queued job older than `max_age_s`; returns their ids."""
    cutoff = (time.time() if now is None else now) - max_age_s
    error = JobError(
        code=JobErrorCode.timeout,
        message=f"no worker took the job within {max_age_s:g} s of its submit",
    )
    expired = []
    for name in JOB_QUEUES:
        for job_id in _old_ids(r, queue_key(name), cutoff):
            rec = jobstore.load(r, job_id)
            # The id is minted before the upload; the record's time is when it was queued.
            if rec is None or rec.created_at >= cutoff:
                continue
            if jobstore.end_queued(r, storage, rec, JobStatus.expired, error):
                expired.append(job_id)
    return expired
