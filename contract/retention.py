"""Retention of finished jobs: their record, owner-index entry and result file go after the
job's `retention_s` (the gateway's `job_record_ttl_s` when the job was submitted).

When a job finishes, `schedule` puts an expiry on its record hash, so Redis itself bounds its
memory even with no gateway running, and enters the job in the sorted set `RETENTION_KEY`.
The gateway's housekeeping (service/housekeeping.py) calls `sweep`, which removes what Redis
cannot: the owner-index entry and the result file under DATA_DIR. The input file is not
kept this long: `jobstore.finish` removes it at once.
"""

from __future__ import annotations

import time

import redis

from contract.schemas import KEY_PREFIX, job_key, owner_index_key
from contract.storage import Storage

RETENTION_KEY = f"{KEY_PREFIX}retention"
SWEEP_BATCH = 500


def _member(owner: str, job_id: str) -> str:
    return f"{owner} {job_id}"  # job ids hold no space; owner names may


def schedule(pipe: redis.client.Pipeline, owner: str, job_id: str, ttl_s: int, now: float) -> None:
    pipe.expire(job_key(job_id), ttl_s)
    pipe.zadd(RETENTION_KEY, {_member(owner, job_id): now + ttl_s})


def forget(pipe: redis.client.Pipeline, owner: str, job_id: str) -> None:
    """For a job deleted by its owner before its time."""
    pipe.zrem(RETENTION_KEY, _member(owner, job_id))


def sweep(r: redis.Redis, storage: Storage, now: float | None = None) -> list[str]:
    """Remove every finished job whose retention has passed; returns their ids."""
    now = time.time() if now is None else now
    removed: list[str] = []
    while due := r.zrangebyscore(RETENTION_KEY, "-inf", now, start=0, num=SWEEP_BATCH):
        pipe = r.pipeline()
        for raw in due:
            owner, _, job_id = raw.decode().rpartition(" ")
            pipe.delete(job_key(job_id))  # Redis may not have expired it yet
            pipe.zrem(owner_index_key(owner), job_id)
            pipe.zrem(RETENTION_KEY, raw)
            storage.delete(job_id)
            removed.append(job_id)
        pipe.execute()
    return removed
