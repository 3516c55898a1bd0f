"""Reading many jobs at once: an owner's jobs page by page, queue depth and queue position.

The owner index (`omnibatch:owner:{owner}:jobs`) scores every member 0, so its members, job
ids that begin with their creation time, sort lexically in creation order; a page walks it
backwards with BYLEX from the cursor, the last id of the previous page.
"""

from __future__ import annotations

import redis
from rq import Queue

from contract.jobstore import JobRecord, from_hash
from contract.schemas import JOB_QUEUES, JobStatus, job_key, owner_index_key


def queue_key(name: str) -> str:
    return Queue.redis_queue_namespace_prefix + name


def queue_depth(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for name in JOB_QUEUES:
        pipe.llen(queue_key(name))
    return sum(pipe.execute())


def queue_position(r: redis.Redis, rec: JobRecord) -> int | None:
    """Jobs a worker takes before this one: higher-priority queues first, then FIFO."""
    own = rec.priority.queue
    ahead = 0
    for name in JOB_QUEUES:
        if name == own:
            pos = r.lpos(queue_key(name), rec.id)
            return None if pos is None else ahead + pos
        ahead += r.llen(queue_key(name))
    return None


def list_jobs(
    r: redis.Redis, owner: str, status: JobStatus | None, limit: int, cursor: str | None
) -> tuple[list[JobRecord], str | None]:
    """Newest first; returns (page, next cursor or None)."""
    key = owner_index_key(owner)
    start = f"({cursor}" if cursor else "+"
    found: list[JobRecord] = []
    batch = max(limit * 2, 50)
    while len(found) <= limit:
        ids = r.zrange(key, start, "-", desc=True, bylex=True, offset=0, num=batch)
        if not ids:
            break
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(job_key(job_id.decode()))
        for raw in pipe.execute():
            if raw:  # an expired record whose index entry the retention sweep has yet to drop
                rec = from_hash(raw)
                if status is None or rec.status is status:
                    found.append(rec)
        start = f"({ids[-1].decode()}"
    page = found[:limit]
    more = len(found) > limit
    return page, (page[-1].id if more and page else None)
