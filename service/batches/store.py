"""Batch records in Redis: a hash per batch whose counters the runner updates in place, its
status changed only by compare-and-set, and the set of batches the runner still drives.

Counting is exactly-once: a fed job is counted when it leaves the batch's in-flight hash, a
line that failed on its way to the queue when it enters the feed-error hash, each in one
Lua call, so that a runner that dies half-way and a second one that takes over never count a
line twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis
from pydantic import BaseModel

from contract.schemas import KEY_PREFIX
from service.batches.ids import BATCH_ID_RE
from service.batches.models import (
    Batch,
    BatchError,
    BatchErrors,
    BatchStatus,
    BatchUsage,
    RequestCounts,
)
from service.batches.paging import page

ACTIVE_KEY = f"{KEY_PREFIX}batches:active"
COMPLETION_WINDOW_S = 24 * 3600

# ARGV[1] = comma-separated allowed current statuses, then field/value pairs. 1 when written.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 0 end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur then
    for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    return 1
  end
end
return 0
"""
# KEYS: in-flight hash, batch hash. ARGV: job id, counter field, input and output tokens.
_COUNT_JOB = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'input_tokens', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'output_tokens', ARGV[4])
return 1
"""
# KEYS: feed-error hash, batch hash. ARGV: job id, error JSON.
_COUNT_FEED_ERROR = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'failed', 1)
return 1
"""


class BatchRecord(BaseModel):
    id: str
    owner: str
    status: BatchStatus
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None = None
    model: str | None = None
    errors: list[BatchError] | None = None
    created_at: int
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0  # lines of the input file
    completed: int = 0
    failed: int = 0  # invalid lines, lines that failed to feed, jobs that did not succeed
    input_tokens: int = 0
    output_tokens: int = 0
    valid: int = 0  # lines in the plan
    fed: int = 0  # plan lines handed to the job system (or failed on the way)
    fed_offset: int = 0  # byte offset of plan line `fed`
    stop: str = ""  # "expire" once the completion window has passed
    draft_output_id: str = ""  # file ids minted by finalize before it writes, reused on retry
    draft_error_id: str = ""

    def public(self) -> Batch:
        return Batch(
            **self.model_dump(include=set(Batch.model_fields) - {"errors", "usage"}),
            errors=BatchErrors(data=self.errors) if self.errors else None,
            request_counts=RequestCounts(
                total=self.total, completed=self.completed, failed=self.failed
            ),
            usage=BatchUsage(
                input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                total_tokens=self.input_tokens + self.output_tokens,
            ),
        )  # fmt: skip


_JSON_FIELDS = ("metadata", "errors")


def batch_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}batch:{batch_id}"


def owner_batches_key(owner: str) -> str:
    return f"{KEY_PREFIX}owner:{owner}:batches"


def inflight_key(batch_id: str) -> str:
    return f"{batch_key(batch_id)}:inflight"


def feed_errors_key(batch_id: str) -> str:
    return f"{batch_key(batch_id)}:feed_errors"


def batch_dir(root: Path, batch_id: str) -> Path:
    if not BATCH_ID_RE.match(batch_id):
        raise ValueError("malformed batch id")
    return root / "batches" / batch_id


def _encode(name: str, value: object) -> str:
    if value is None:
        return ""
    if name in _JSON_FIELDS:
        if isinstance(value, list):
            value = [e.model_dump() if isinstance(e, BaseModel) else e for e in value]
        return json.dumps(value)
    return str(value)


def _decode(raw: dict[bytes, bytes]) -> BatchRecord:
    data: dict[str, object] = {}
    for k, v in raw.items():
        name, text = k.decode(), v.decode()
        if name in BatchRecord.model_fields and text != "":
            data[name] = json.loads(text) if name in _JSON_FIELDS else text
    return BatchRecord.model_validate(data)


def new_record(
    batch_id: str, owner: str, input_file_id: str, endpoint: str, metadata: dict | None
) -> BatchRecord:
    now = int(time.time())
    return BatchRecord(
        id=batch_id, owner=owner, status=BatchStatus.validating, endpoint=endpoint,
        input_file_id=input_file_id, completion_window="24h", metadata=metadata,
        created_at=now, expires_at=now + COMPLETION_WINDOW_S,
    )  # fmt: skip


def create(r: redis.Redis, rec: BatchRecord) -> None:
    fields = {name: _encode(name, getattr(rec, name)) for name in BatchRecord.model_fields}
    pipe = r.pipeline()
    pipe.hset(batch_key(rec.id), mapping=fields)
    pipe.zadd(owner_batches_key(rec.owner), {rec.id: 0})
    pipe.sadd(ACTIVE_KEY, rec.id)
    pipe.execute()


def load(r: redis.Redis, batch_id: str) -> BatchRecord | None:
    if not BATCH_ID_RE.match(batch_id):
        return None
    raw = r.hgetall(batch_key(batch_id))
    return _decode(raw) if raw else None


def load_many(r: redis.Redis, batch_ids: list[str]) -> list[BatchRecord | None]:
    pipe = r.pipeline(transaction=False)
    for batch_id in batch_ids:
        pipe.hgetall(batch_key(batch_id))
    return [_decode(raw) if raw else None for raw in pipe.execute()]


def list_batches(
    r: redis.Redis, owner: str, after: str | None, limit: int
) -> tuple[list[BatchRecord], bool]:
    return page(r, owner_batches_key(owner), after, limit, lambda ids: load_many(r, ids))


def transition(
    r: redis.Redis, batch_id: str, allowed: tuple[BatchStatus, ...], **fields: object
) -> bool:
    """Write `fields` only while the status is one of `allowed`; True when written."""
    args = [",".join(s.value for s in allowed)]
    for name, value in fields.items():
        args += [name, _encode(name, value)]
    return bool(r.eval(_TRANSITION, 1, batch_key(batch_id), *args))


def set_fields(r: redis.Redis, batch_id: str, **fields: object) -> None:
    r.hset(batch_key(batch_id), mapping={n: _encode(n, v) for n, v in fields.items()})


def count_job(
    r: redis.Redis, batch_id: str, job_id: str, ok: bool, tokens: tuple[int, int]
) -> bool:
    """Count a fed job that ended (`ok`: it succeeded), once; False if it was counted before."""
    keys = (inflight_key(batch_id), batch_key(batch_id))
    counter = "completed" if ok else "failed"
    return bool(r.eval(_COUNT_JOB, 2, *keys, job_id, counter, *tokens))


def count_feed_error(r: redis.Redis, batch_id: str, job_id: str, error: BatchError) -> bool:
    """Record and count a line that failed on its way to the queue, once."""
    keys = (feed_errors_key(batch_id), batch_key(batch_id))
    return bool(r.eval(_COUNT_FEED_ERROR, 2, *keys, job_id, error.model_dump_json()))


def active_ids(r: redis.Redis) -> list[str]:
    return sorted(m.decode() for m in r.smembers(ACTIVE_KEY))


def retire(r: redis.Redis, batch_id: str, ttl_s: int) -> None:
    """A batch that reached its terminal status: no longer driven, kept for `ttl_s`."""
    pipe = r.pipeline()
    pipe.srem(ACTIVE_KEY, batch_id)
    pipe.delete(inflight_key(batch_id), feed_errors_key(batch_id))
    pipe.expire(batch_key(batch_id), ttl_s)
    pipe.execute()
