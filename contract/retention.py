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
from collections.abc import Callable

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

    def remove(pipe: redis.client.Pipeline, owner: str, job_id: str) -> None:
        pipe.delete(job_key(job_id))  # Redis may not have expired it yet
        pipe.zrem(owner_index_key(owner), job_id)
        storage.delete(job_id)

    return sweep_due(r, RETENTION_KEY, now, remove)


def sweep_due(
    r: redis.Redis,
    key: str,
    now: float | None,
    remove: Callable[[redis.client.Pipeline, str, str], None],
) -> list[str]:
    """Each `owner id` member of the sorted set `key` whose time (its score) has passed,
    SWEEP_BATCH at a time: `remove(pipe, owner, id)` queues its cleanup in Redis (and does
    what lies outside), and the member leaves `key` in the same pipeline. Returns the ids."""
    now = time.time() if now is None else now
    removed: list[str] = []
    while due := r.zrangebyscore(key, "-inf", now, start=0, num=SWEEP_BATCH):
        pipe = r.pipeline()
        for raw in due:
            owner, _, item_id = raw.decode().rpartition(" ")
            remove(pipe, owner, item_id)
            pipe.zrem(key, raw)
            removed.append(item_id)
        pipe.execute()
    return removed
