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
        finished segments), removes the input file, starts the record's retention, updates
        metrics and enqueues the webhook event.
    mark_requeued(r, job_id) -> bool
        running → queued, for a job handed back to its queue: its worker stopped before
        finishing it, or died and its lease expired (workers/leases.py).

Record: hash `omnibatch:job:{id}`; times are unix seconds; JSON fields hold the schema models.
Index:  sorted set `omnibatch:owner:{owner}:jobs` (read by service/joblist.py).
"""

from __future__ import annotations

import json
import secrets
import time

import redis
from pydantic import BaseModel, Field
from rq import Queue
from rq.job import Job

from service import events, metrics, retention
from service.schemas import (
    JOB_FUNCTION,
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
    WebhookState,
    cancel_key,
    job_key,
    owner_index_key,
)
from service.storage import Storage

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
    retention_s: int  # how long the record and result outlive the job's end

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


def from_hash(raw: dict[bytes, bytes]) -> JobRecord:
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


def load(r: redis.Redis, job_id: str) -> JobRecord | None:
    raw = r.hgetall(job_key(job_id))
    return from_hash(raw) if raw else None


def _transition(r, job_id: str, allowed: tuple[JobStatus, ...], **fields) -> bool:
    args = [",".join(s.value for s in allowed)]
    for name, value in fields.items():
        if isinstance(value, BaseModel):
            value = value.model_dump_json()
        args += [name, "" if value is None else str(value)]
    return bool(r.eval(_TRANSITION, 1, job_key(job_id), *args))


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
    return _finish(
        r, storage, job_id, status, (JobStatus.queued, JobStatus.running),
        output=output, usage=usage, error=error, model=model,
    )  # fmt: skip


def _finish(
    r: redis.Redis,
    storage: Storage,
    job_id: str,
    status: JobStatus,
    allowed: tuple[JobStatus, ...],
    *,
    output: Output | None = None,
    usage: Usage | None = None,
    error: JobError | None = None,
    model: ModelInfo | None = None,
) -> bool:
    """`finish` out of the `allowed` statuses only: the gateway ends queued jobs only, so that
    a job a worker has just started is never ended under it."""
    if not status.terminal:
        raise ValueError(f"finish() needs a terminal status, not {status}")
    rec = load(r, job_id)
    if rec is None or rec.status not in allowed:
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
    if not _transition(r, job_id, allowed, **fields):
        if staged is not None:
            staged.unlink(missing_ok=True)
        return False
    if staged is not None:
        storage.commit_result(staged, job_id)
    storage.delete_input(job_id)
    pipe = r.pipeline()
    retention.schedule(pipe, rec.owner, job_id, rec.retention_s, now)
    pipe.delete(cancel_key(job_id))
    pipe.execute()
    Job(job_id, connection=r).delete(remove_from_queue=False)  # RQ's copy has done its part
    metrics.record_finish(r, status, usage, now - (rec.started_at or now))
    if rec.request.webhook is not None:
        events.enqueue(r, rec, status, now)
    return True


def update_webhook_state(r: redis.Redis, job_id: str, state: WebhookState) -> None:
    # A compare-and-set, so that a record whose retention ended is not recreated half-empty.
    _transition(r, job_id, tuple(s for s in JobStatus if s.terminal), webhook=state)


def end_queued(
    r: redis.Redis, storage: Storage, rec: JobRecord, status: JobStatus, error: JobError
) -> bool:
    """A job no worker has started leaves its queue with a terminal status (cancel, expiry).
    False when it is no longer queued: a worker took it, or it already ended."""
    # Out of the list first, so that no reader sees an ended job still queued. Should the
    # transition then fail, the job was not in the list: a worker had taken it, or it ended.
    Queue(rec.priority.queue, connection=r).remove(rec.id)
    return _finish(r, storage, rec.id, status, (JobStatus.queued,), error=error)


def cancel(r: redis.Redis, storage: Storage, rec: JobRecord) -> JobRecord:
    """Queued: leaves the queue and is cancelled now. Running: the worker is asked to stop at
    its next safe point. Terminal: nothing changes. Returns the record as it now stands."""
    if rec.status is JobStatus.queued:
        err = JobError(code=JobErrorCode.cancelled, message="cancelled before it started")
        end_queued(r, storage, rec, JobStatus.cancelled, err)
        rec = load(r, rec.id) or rec  # running, if a worker took it in the meantime
    if rec.status is JobStatus.running:
        r.set(cancel_key(rec.id), "1", ex=CANCEL_FLAG_TTL_S)
    return rec


def delete(r: redis.Redis, storage: Storage, rec: JobRecord) -> None:
    cancel(r, storage, rec)
    pipe = r.pipeline()
    pipe.delete(job_key(rec.id))
    pipe.zrem(owner_index_key(rec.owner), rec.id)
    retention.forget(pipe, rec.owner, rec.id)
    pipe.execute()
    storage.delete(rec.id)
