"""Job records in Redis, and every state change a job goes through.

No web framework in here: the worker imports this module. The Redis client must be created
with `decode_responses=False` (RQ needs bytes); use `connect(url)`.

Worker-facing API (all take the Redis client first, all are safe to call from any process):
    load(r, job_id) -> JobRecord | None
    mark_running(r, job_id, worker_id) -> bool
        queued → running. False when the job is no longer queued (cancelled, deleted, or
        already running elsewhere): the worker must then skip it.
    set_progress(r, job_id, stage, done, total)
    is_cancel_requested(r, job_id) -> bool
        polled at safe points; the flag is the key `omnibatch:job:{id}:cancel`.
    finish(r, storage, job_id, status, *, output=None, usage=None, error=None, model=None) -> bool
        running|queued → succeeded|failed|cancelled, exactly once (False if already terminal
        or deleted). Writes the result file when `output` is given (a cancelled job keeps its
        finished segments), updates metrics and enqueues the webhook event.
    mark_requeued(r, job_id) -> bool
        running → queued, for a job whose worker was lost and which RQ runs again.

Record: hash `omnibatch:job:{id}`; times are unix seconds; JSON fields hold the schema models.
Index:  sorted set `omnibatch:owner:{owner}:jobs`, all scores 0, so members (time-ordered job
        ids) sort lexically = by creation time; listing walks it backwards with BYLEX.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

import redis
from pydantic import BaseModel, Field
from rq import Queue
from rq.job import Job

from service import metrics
from service.schemas import (
    JOB_FUNCTION,
    JOB_QUEUES,
    WEBHOOK_QUEUE,
    JobCreate,
    JobError,
    JobErrorCode,
    JobResult,
    JobStatus,
    ModelInfo,
    Output,
    Priority,
    Progress,
    Usage,
    WebhookEvent,
    WebhookEventData,
    WebhookState,
    cancel_key,
    job_key,
)
from service.storage import Storage

WEBHOOK_FUNCTION = "service.webhooks.deliver"
CANCEL_FLAG_TTL_S = 7 * 24 * 3600

# Compare-and-set of the status: ARGV[1] = comma-separated allowed current statuses, then
# field/value pairs to write. Returns 1 when written.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 0 end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class JobRecord(BaseModel):
    id: str
    owner: str
    status: JobStatus
    request: JobCreate
    media_type: str | None = None
    input: str = ""  # path of the input relative to DATA_DIR
    base_url: str = ""  # the gateway URL the job was submitted to; builds result_url
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = Field(default_factory=Progress)
    usage: Usage | None = None
    error: JobError | None = None
    webhook: WebhookState | None = None
    webhook_secret: str | None = None
    result: str = ""  # path of the result relative to DATA_DIR
    worker: str = ""

    @property
    def priority(self) -> Priority:
        return self.request.priority

    @property
    def result_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/jobs/{self.id}/result"


_JSON_FIELDS = ("request", "progress", "usage", "error", "webhook")


def _to_hash(rec: JobRecord) -> dict[str, str]:
    out = {}
    for name in JobRecord.model_fields:
        value = getattr(rec, name)
        if name in _JSON_FIELDS:
            out[name] = value.model_dump_json() if value is not None else ""
        else:
            out[name] = "" if value is None else str(value)
    return out


def _from_hash(raw: dict[bytes, bytes]) -> JobRecord:
    data: dict[str, object] = {}
    for k, v in raw.items():
        name, text = k.decode(), v.decode()
        if name not in JobRecord.model_fields or text == "":
            continue
        data[name] = json.loads(text) if name in _JSON_FIELDS else text
    return JobRecord.model_validate(data)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


def new_job_id() -> str:
    """`job_` + 12 hex digits of milliseconds + 16 random: lexical order is creation order."""
    return f"job_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def owner_index_key(owner: str) -> str:
    return f"omnibatch:owner:{owner}:jobs"


def load(r: redis.Redis, job_id: str) -> JobRecord | None:
    raw = r.hgetall(job_key(job_id))
    return _from_hash(raw) if raw else None


def _transition(r, job_id: str, allowed: tuple[JobStatus, ...], **fields) -> bool:
    args = [",".join(s.value for s in allowed)]
    for name, value in fields.items():
        if isinstance(value, BaseModel):
            value = value.model_dump_json()
        args += [name, "" if value is None else str(value)]
    return bool(r.eval(_TRANSITION, 1, job_key(job_id), *args))


def queue_depth(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for name in JOB_QUEUES:
        pipe.llen(Queue.redis_queue_namespace_prefix + name)
    return sum(pipe.execute())


def queue_position(r: redis.Redis, rec: JobRecord) -> int | None:
    """Jobs a worker takes before this one: higher-priority queues first, then FIFO."""
    own = rec.priority.queue
    ahead = 0
    for name in JOB_QUEUES:
        key = Queue.redis_queue_namespace_prefix + name
        if name == own:
            pos = r.lpos(key, rec.id)
            return None if pos is None else ahead + pos
        ahead += r.llen(key)
    return None


def create(r: redis.Redis, rec: JobRecord, job_timeout_s: int, rq_result_ttl_s: int) -> None:
    pipe = r.pipeline()
    pipe.hset(job_key(rec.id), mapping=_to_hash(rec))
    pipe.zadd(owner_index_key(rec.owner), {rec.id: 0})
    pipe.execute()
    Queue(rec.priority.queue, connection=r).enqueue(
        JOB_FUNCTION,
        rec.id,
        job_id=rec.id,
        job_timeout=job_timeout_s,
        result_ttl=rq_result_ttl_s,
    )
    metrics.incr(r, "jobs_submitted")


def mark_running(r: redis.Redis, job_id: str, worker_id: str) -> bool:
    ok = _transition(
        r, job_id, (JobStatus.queued,), status=JobStatus.running.value,
        started_at=time.time(), worker=worker_id,
        progress=Progress(stage="starting"),
    )  # fmt: skip
    if ok:
        metrics.incr(r, "jobs_started")
    return ok


def mark_requeued(r: redis.Redis, job_id: str) -> bool:
    return _transition(
        r, job_id, (JobStatus.running,), status=JobStatus.queued.value,
        started_at=None, worker="", progress=Progress(stage="queued"),
    )  # fmt: skip


def set_progress(r: redis.Redis, job_id: str, stage: str, done: int, total: int) -> None:
    _transition(
        r, job_id, (JobStatus.running,), progress=Progress(stage=stage, done=done, total=total)
    )


def is_cancel_requested(r: redis.Redis, job_id: str) -> bool:
    return bool(r.exists(cancel_key(job_id)))


def finish(
    r: redis.Redis,
    storage: Storage,
    job_id: str,
    status: JobStatus,
    *,
    output: Output | None = None,
    usage: Usage | None = None,
    error: JobError | None = None,
    model: ModelInfo | None = None,
) -> bool:
    if not status.terminal:
        raise ValueError(f"finish() needs a terminal status, not {status}")
    rec = load(r, job_id)
    if rec is None or rec.status.terminal:
        return False
    usage = usage or Usage()
    staged = None
    if output is not None:  # staged first, published only by the call that wins the transition
        result = JobResult(
            id=job_id, status=status, model=model or ModelInfo(name="unknown"),
            output=output, usage=usage, metadata=rec.request.metadata,
        )  # fmt: skip
        staged = storage.stage_result(result)
    now = time.time()
    fields = {"status": status.value, "finished_at": now, "usage": usage, "error": error}
    fields["result"] = str(storage.result_path(job_id).relative_to(storage.root)) if staged else ""
    fields["progress"] = rec.progress.model_copy(update={"stage": status.value})
    if rec.request.webhook is not None:
        fields["webhook"] = WebhookState()
    if not _transition(r, job_id, (JobStatus.queued, JobStatus.running), **fields):
        if staged is not None:
            staged.unlink(missing_ok=True)
        return False
    if staged is not None:
        storage.commit_result(staged, job_id)
    r.delete(cancel_key(job_id))
    Job(job_id, connection=r).delete(remove_from_queue=False)  # RQ's copy has done its part
    metrics.record_finish(r, status, usage, now - (rec.started_at or now))
    if rec.request.webhook is not None:
        _enqueue_webhook(r, rec, status, now)
    return True


def _enqueue_webhook(r: redis.Redis, rec: JobRecord, status: JobStatus, now: float) -> None:
    event_id = f"evt_{secrets.token_hex(12)}"
    event = WebhookEvent(
        type=f"job.{status.value}",
        id=event_id,
        created_at=datetime.fromtimestamp(now, UTC),
        data=WebhookEventData(
            job_id=rec.id, status=status, result_url=rec.result_url, metadata=rec.request.metadata
        ),
    )
    r.hset(
        f"omnibatch:event:{event_id}",
        mapping={
            "job_id": rec.id,
            "url": rec.request.webhook.url,
            "secret": rec.webhook_secret or "",
            "body": event.model_dump_json(),
            "first_attempt_at": now,
        },
    )
    Queue(WEBHOOK_QUEUE, connection=r).enqueue(WEBHOOK_FUNCTION, event_id, result_ttl=0)


def update_webhook_state(r: redis.Redis, job_id: str, state: WebhookState) -> None:
    if r.exists(job_key(job_id)):
        r.hset(job_key(job_id), "webhook", state.model_dump_json())


def cancel(r: redis.Redis, storage: Storage, rec: JobRecord) -> JobRecord:
    """Queued: leaves the queue and is cancelled now. Running: the worker is asked to stop at
    its next safe point. Terminal: nothing changes. Returns the record as it now stands."""
    if rec.status is JobStatus.queued:
        queue = Queue(rec.priority.queue, connection=r)
        queue.remove(rec.id)
        err = JobError(code=JobErrorCode.cancelled, message="cancelled before it started")
        finish(r, storage, rec.id, JobStatus.cancelled, error=err)
        rec = load(r, rec.id) or rec
    if rec.status is JobStatus.running:
        r.set(cancel_key(rec.id), "1", ex=CANCEL_FLAG_TTL_S)
    return rec


def delete(r: redis.Redis, storage: Storage, rec: JobRecord) -> None:
    cancel(r, storage, rec)
    pipe = r.pipeline()
    pipe.delete(job_key(rec.id))
    pipe.zrem(owner_index_key(rec.owner), rec.id)
    pipe.execute()
    storage.delete(rec.id)


def list_jobs(
    r: redis.Redis, owner: str, status: JobStatus | None, limit: int, cursor: str | None
) -> tuple[list[JobRecord], str | None]:
    """Newest first; `cursor` is the last id of the previous page."""
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
            if raw:
                rec = _from_hash(raw)
                if status is None or rec.status is status:
                    found.append(rec)
        start = f"({ids[-1].decode()}"
    page = found[:limit]
    more = len(found) > limit
    return page, (page[-1].id if more and page else None)


def claim_idempotency_key(
    r: redis.Redis, owner: str, key: str, fingerprint: str, job_id: str, ttl_s: int
) -> str | None:
    """Returns None when `job_id` now owns `key`; the first job's id when the same request was
    seen; raises ValueError when the key was used for a different request."""
    rkey = f"omnibatch:idem:{owner}:{key}"
    value = f"{job_id} {fingerprint}"
    if r.set(rkey, value, nx=True, ex=ttl_s):
        return None
    first_id, _, first_fp = (r.get(rkey) or b"").decode().partition(" ")
    if first_fp != fingerprint:
        raise ValueError("this Idempotency-Key was used with a different request")
    if not r.exists(job_key(first_id)):  # the first job was deleted: this request takes over
        r.set(rkey, value, ex=ttl_s)
        return None
    return first_id
