"""Job records in Redis, and every state change a job goes through.

No web framework in here: the worker imports this module. The Redis client must be created
with `decode_responses=False` (RQ needs bytes); use `connect(url)`.

A record is `running` exactly while a worker holds a lease on it: queued → running and
running → queued happen inside the lease scripts of workers/leases.py, in the same atomic
step that takes or gives up the lease (they write `running_fields` / `requeued_fields`). The
record's `attempt` is the lease token of the attempt running it.

Worker-facing API (all take the Redis client first, all are safe to call from any process):
    load(r, job_id, strict=True) -> JobRecord | None
        raises pydantic.ValidationError when the stored request no longer validates (a record
        written by an older gateway).
    set_progress(r, job_id, attempt, stage, done, total, media_type=None)
        `r` may be a pipeline; written only while that attempt runs the job. `media_type`:
        the kind the worker found when it opened the input (the gateway leaves it None for
        audio/video containers), written with the progress once known.
    finish(r, storage, job_id, status, *, attempt=None, output=None, usage=None, error=None,
           model=None, media_type=None) -> bool
        running|queued → succeeded|failed|cancelled, exactly once (False if already terminal,
        deleted, or run by another attempt than `attempt`). The record, its retention, the
        metrics and the webhook event change in one MULTI/EXEC transaction; then the result
        file is published and the input removed. For an `attempt`, it is idempotent: a retry
        after a lost reply answers True again, so callers retry on Redis errors.
Cancel flag: `omnibatch:job:{id}:cancel`, polled by the worker in one batch for all its jobs.

Record: hash `omnibatch:job:{id}`; times are unix seconds; JSON fields hold the schema models.
Index:  sorted set `omnibatch:owner:{owner}:jobs` (read by service/joblist.py).
"""

from __future__ import annotations

import json
import secrets
import time

import redis
from pydantic import BaseModel, Field, ValidationError
from redis.commands.core import Script
from rq import Queue
from rq.job import Job

from contract import events, metrics, retention
from contract.schemas import (
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
from contract.storage import Storage

CANCEL_FLAG_TTL_S = 7 * 24 * 3600
# A caller waits this long for a free connection before it gets a ConnectionError: the
# pool bounds connections, threads queue for them instead of failing (the worker runs
# hundreds of job threads on one client).
POOL_WAIT_S = 30.0

# Compare-and-set of the status: ARGV[1] = comma-separated allowed current statuses, ARGV[2]
# = the attempt that must be running the job ("" for any), then field/value pairs to write.
# Returns 1 when written.
_TRANSITION = Script(
    None,
    b"""
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 0 end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
""",
)


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
    attempt: str = ""  # lease token of the attempt running it, or that finished it
    retention_s: int  # how long the record and result outlive the job's end

    @property
    def priority(self) -> Priority:
        return self.request.priority

    @property
    def result_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/jobs/{self.id}/result"


_JSON_FIELDS = ("request", "progress", "usage", "error", "webhook")
# What a reader keeps of a stored request that no longer validates (`load`)
_KEPT_REQUEST_FIELDS = ("task", "prompt", "priority", "metadata", "webhook")


def _text(value) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return "" if value is None else str(value)


def _to_hash(rec: JobRecord) -> dict[str, str]:
    return {name: _text(getattr(rec, name)) for name in JobRecord.model_fields}


def _fields(raw: dict[bytes, bytes]) -> dict[str, object]:
    data: dict[str, object] = {}
    for k, v in raw.items():
        name, text = k.decode(), v.decode()
        if name not in JobRecord.model_fields or text == "":
            continue
        data[name] = json.loads(text) if name in _JSON_FIELDS else text
    return data


def from_hash(raw: dict[bytes, bytes], *, strict: bool = False) -> JobRecord:
    """The record, its request validated against JobCreate again. A request stored by a
    gateway that checked less (an older version) may no longer validate: `strict` (the
    worker, which must not run anything but the request submitted) raises ValidationError
    then; readers get the request reduced to the parts that still validate."""
    data = _fields(raw)
    try:
        return JobRecord.model_validate(data)
    except ValidationError:
        if strict:
            raise
    request = data.get("request") if isinstance(data.get("request"), dict) else {}
    kept = {k: request[k] for k in _KEPT_REQUEST_FIELDS if k in request}
    try:
        data["request"] = JobCreate.model_validate(kept)
    except ValidationError:
        data["request"] = JobCreate()
    return JobRecord.model_validate(data)


def connect(
    url: str, max_connections: int = 64, socket_timeout: float | None = None
) -> redis.Redis:
    """A client on a bounded pool. `socket_timeout` bounds each reply (the gateway's: a Redis
    that stops answering without closing its connections must not hang requests); None
    waits, as RQ's blocking pops need."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=30,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
    )
    return redis.Redis(connection_pool=pool, decode_responses=False)


def new_job_id() -> str:
    """`job_` + 12 hex digits of milliseconds + 16 random: lexical order is creation order."""
    return f"job_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def load(r: redis.Redis, job_id: str, *, strict: bool = False) -> JobRecord | None:
    raw = r.hgetall(job_key(job_id))
    return from_hash(raw, strict=strict) if raw else None


def _transition(r, job_id: str, allowed: tuple[JobStatus, ...], attempt: str = "", **fields):
    args = [",".join(s.value for s in allowed), attempt]
    for name, value in fields.items():
        args += [name, _text(value)]
    return _TRANSITION(keys=[job_key(job_id)], args=args, client=r)


def running_fields(worker_id: str, attempt: str, now: float) -> list[str]:
    """queued → running, written by the lease claim (workers/leases.py)."""
    progress = Progress(stage="starting").model_dump_json()
    return [
        "status", JobStatus.running.value, "started_at", str(now), "worker", worker_id,
        "attempt", attempt, "progress", progress,
    ]  # fmt: skip


def requeued_fields() -> list[str]:
    """running → queued, written when a lease ends unfinished (workers/leases.py)."""
    progress = Progress(stage="queued").model_dump_json()
    return [
        "status", JobStatus.queued.value, "started_at", "", "worker", "", "attempt", "",
        "progress", progress,
    ]  # fmt: skip


def create(r: redis.Redis, rec: JobRecord, job_timeout_s: int, rq_result_ttl_s: int) -> None:
    """Record, owner index, queue entry and the submitted counter in one transaction."""
    with r.pipeline() as pipe:
        pipe.multi()
        pipe.hset(job_key(rec.id), mapping=_to_hash(rec))
        pipe.zadd(owner_index_key(rec.owner), {rec.id: 0})
        Queue(rec.priority.queue, connection=r).enqueue(
            JOB_FUNCTION,
            rec.id,
            job_id=rec.id,
            job_timeout=job_timeout_s,
            result_ttl=rq_result_ttl_s,
            pipeline=pipe,
        )
        metrics.incr(pipe, "jobs_submitted")
        pipe.execute()


def set_progress(
    r, job_id: str, attempt: str, stage: str, done: int, total: int, media_type: str | None = None
) -> None:
    progress = Progress(stage=stage, done=done, total=total)
    known = {"media_type": media_type} if media_type is not None else {}
    _transition(r, job_id, (JobStatus.running,), attempt, progress=progress, **known)


def finish(
    r: redis.Redis,
    storage: Storage,
    job_id: str,
    status: JobStatus,
    *,
    attempt: str | None = None,
    output: Output | None = None,
    usage: Usage | None = None,
    error: JobError | None = None,
    model: ModelInfo | None = None,
    media_type: str | None = None,
) -> bool:
    return _finish(
        r, storage, job_id, status, (JobStatus.queued, JobStatus.running), attempt=attempt,
        output=output, usage=usage, error=error, model=model, media_type=media_type,
    )  # fmt: skip


def _finish(
    r: redis.Redis,
    storage: Storage,
    job_id: str,
    status: JobStatus,
    allowed: tuple[JobStatus, ...],
    *,
    attempt: str | None = None,
    output: Output | None = None,
    usage: Usage | None = None,
    error: JobError | None = None,
    model: ModelInfo | None = None,
    media_type: str | None = None,
) -> bool:
    """`finish` out of the `allowed` statuses only: the gateway ends queued jobs only, so that
    a job a worker has just started is never ended under it."""
    if not status.terminal:
        raise ValueError(f"finish() needs a terminal status, not {status}")
    rec = load(r, job_id)
    if rec is None:
        return False
    usage = usage or Usage()
    staged = None
    if output is not None:  # written first, published by the record of the call that wins
        result = JobResult(
            id=job_id, status=status, model=model or ModelInfo(name="unknown"),
            output=output, usage=usage, metadata=rec.request.metadata,
        )  # fmt: skip
        staged = storage.stage_result(result, attempt or "")
    # On an error the transaction may still have committed (a lost reply): the file stays,
    # the same attempt's retry writes it again, and retention removes it either way.
    won = _commit(r, rec, status, allowed, attempt, usage, error, media_type, staged, storage)
    if not won:
        if staged is not None:
            staged.unlink(missing_ok=True)
        return False
    storage.delete_input(job_id)
    return True


def _commit(r, rec, status, allowed, attempt, usage, error, media_type, staged, storage):
    """The transition and everything that must happen with it, as one transaction; the
    record names the `staged` result file (already whole on disk), if any."""
    key = job_key(rec.id)
    now = time.time()
    result = staged.relative_to(storage.root) if staged is not None else ""
    fields = {
        "status": status.value, "finished_at": now, "usage": usage, "error": error,
        "attempt": attempt or "", "result": str(result),
        "progress": rec.progress.model_copy(update={"stage": status.value}),
    }  # fmt: skip
    if rec.request.webhook is not None:
        fields["webhook"] = WebhookState()
    if media_type is not None:
        fields["media_type"] = media_type
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                current, holder = pipe.hmget(key, "status", "attempt")
                if current is None:
                    return False
                if attempt is not None and (holder or b"").decode() != attempt:
                    return False
                current = JobStatus(current.decode())
                if current.terminal:  # by this attempt: a retry whose first reply was lost
                    return attempt is not None
                if current not in allowed:
                    return False
                pipe.multi()
                pipe.hset(key, mapping={k: _text(v) for k, v in fields.items()})
                retention.schedule(pipe, rec.owner, rec.id, rec.retention_s, now)
                pipe.delete(cancel_key(rec.id), Job.key_for(rec.id))  # RQ's copy has done its part
                metrics.record_finish(pipe, status, usage, now - (rec.started_at or now))
                if rec.request.webhook is not None:
                    events.enqueue(r, pipe, rec, status, now)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


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
        if not rec.attempt:
            # Left running without a lease by a version that recorded no attempts: no worker
            # will ever read the flag, so it ends here.
            err = JobError(code=JobErrorCode.cancelled, message="cancelled while running")
            _finish(r, storage, rec.id, JobStatus.cancelled, (JobStatus.running,), error=err)
            rec = load(r, rec.id) or rec
    return rec


def delete(r: redis.Redis, storage: Storage, rec: JobRecord) -> None:
    cancel(r, storage, rec)
    pipe = r.pipeline()
    pipe.delete(job_key(rec.id))
    pipe.zrem(owner_index_key(rec.owner), rec.id)
    retention.forget(pipe, rec.owner, rec.id)
    pipe.execute()
    storage.delete(rec.id)
