"""Job leases: how a worker takes a job off an RQ queue without losing it if it dies.

RQ's own worker moves a job from the queue list to its StartedJobRegistry in two steps and
forks per job; our worker is one long-lived process running many jobs, so it keeps its own
lease per job, taken in the same atomic step that pops the id and marks the job running:

- `omnibatch:leases`          sorted set, member job id, score = lease expiry (unix seconds)
- `omnibatch:lease:{job_id}`  hash {token, worker, queue}: who holds it, where it came from
- `omnibatch:job:{job_id}:attempts`  how many times the job was taken

The holder renews its leases with every heartbeat. A lease that expires means the worker
died (SIGKILL, OOM, lost host): any worker's sweep puts the job back to the head of the
queue it came from. Every step is one Lua script that changes the lease and the job record
together (contract/jobstore.py: a record is `running` exactly while a lease on it exists), so
two sweepers cannot requeue a job twice, a pop can never leave a job in neither the queue
nor the lease set, and no job is left `running` without a lease.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis
from rq import Queue

from contract import jobstore
from contract.metrics import METRICS_KEY
from contract.schemas import KEY_PREFIX

LEASES_KEY = f"{KEY_PREFIX}leases"


def lease_key(job_id: str) -> str:
    return f"{KEY_PREFIX}lease:{job_id}"


def attempts_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}:attempts"


# Lease expiry is on the Redis server's clock, so hosts need not agree on the time.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""

# Back to the head of `queue`, if the job is not finished: a running record becomes queued
# (ARGV from `first` on: jobstore.requeued_fields). Returns 1 when pushed.
_GIVE_BACK = """
local function give_back(prefix, id, queue, first)
  local job = prefix .. 'job:' .. id
  local status = redis.call('HGET', job, 'status')
  if status ~= 'running' and status ~= 'queued' then return 0 end
  if status == 'running' then
    for i = first, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
  end
  redis.call('LPUSH', queue, id)
  return 1
end
"""

# KEYS: queue lists in priority order. ARGV: ttl, token, worker, key prefix, attempts ttl,
# metrics key, then the record's running fields (jobstore.running_fields). Ids of finished
# or deleted jobs (cancelled or expired while queued) are dropped on the way.
_CLAIM = (
    _NOW
    + """
for i, queue in ipairs(KEYS) do
  while true do
    local id = redis.call('LPOP', queue)
    if not id then break end
    local job = ARGV[4] .. 'job:' .. id
    local status = redis.call('HGET', job, 'status')
    if status == 'queued' or status == 'running' then
      redis.call('ZADD', ARGV[4] .. 'leases', now + tonumber(ARGV[1]), id)
      redis.call('HSET', ARGV[4] .. 'lease:' .. id, 'token', ARGV[2], 'worker', ARGV[3],
                 'queue', queue)
      local attempts = redis.call('INCR', job .. ':attempts')
      redis.call('EXPIRE', job .. ':attempts', ARGV[5])
      for k = 7, #ARGV, 2 do redis.call('HSET', job, ARGV[k], ARGV[k + 1]) end
      redis.call('HINCRBYFLOAT', ARGV[6], 'job_attempts', 1)
      if attempts == 1 then redis.call('HINCRBYFLOAT', ARGV[6], 'jobs_started', 1) end
      return {id, queue, attempts, redis.call('EXISTS', job .. ':cancel')}
    end
  end
end
return false
"""
)

# ARGV: key prefix, job id, token, ttl.
_RENEW = (
    _NOW
    + """
if redis.call('HGET', ARGV[1] .. 'lease:' .. ARGV[2], 'token') ~= ARGV[3] then return 0 end
redis.call('ZADD', ARGV[1] .. 'leases', 'XX', now + tonumber(ARGV[4]), ARGV[2])
return 1
"""
)

# ARGV: key prefix, job id, token, forgive (1/0), then jobstore.requeued_fields. Ends a lease
# only if the caller holds it; a job not finished goes back to its queue, and with `forgive`
# its attempt is not counted (a graceful hand-back lost nothing). Returns 0 (not held),
# 1 (ended), 2 (ended, job requeued).
_RELEASE = (
    _GIVE_BACK
    + """
local lease = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('HGET', lease, 'token') ~= ARGV[3] then return 0 end
local pushed = give_back(ARGV[1], ARGV[2], redis.call('HGET', lease, 'queue'), 5)
local attempts = ARGV[1] .. 'job:' .. ARGV[2] .. ':attempts'
if pushed == 0 then
  redis.call('DEL', attempts)
elseif ARGV[4] == '1' then
  redis.call('DECR', attempts)
end
redis.call('DEL', lease)
redis.call('ZREM', ARGV[1] .. 'leases', ARGV[2])
return 1 + pushed
"""
)

# ARGV: key prefix, then jobstore.requeued_fields. Ends every expired lease, requeueing its
# job if it is not finished; returns the requeued ids.
_SWEEP = (
    _NOW
    + _GIVE_BACK
    + """
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'leases', '-inf', now)
local requeued = {}
for i, id in ipairs(ids) do
  local lease = ARGV[1] .. 'lease:' .. id
  local queue = redis.call('HGET', lease, 'queue')
  if queue and give_back(ARGV[1], id, queue, 2) == 1 then table.insert(requeued, id) end
  redis.call('DEL', lease)
  redis.call('ZREM', ARGV[1] .. 'leases', id)
end
return requeued
"""
)


@dataclass(frozen=True)
class Lease:
    job_id: str
    queue: str  # RQ queue name the job was taken from
    token: str  # unique per attempt: only its holder may finish or renew it
    attempts: int  # this attempt's number, 1 for the first
    cancel_requested: bool = False  # the job's cancel flag was set when it was taken


class LeaseTable:
    def __init__(self, redis: Redis, worker_id: str, ttl_s: float, attempts_ttl_s: int):
        self.redis = redis
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.attempts_ttl_s = attempts_ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._sweep = redis.register_script(_SWEEP)

    def claim(self, queues: list[Queue], token: str) -> Lease | None:
        """Pop the first job id of the first non-empty queue, lease it and mark the job
        running (as this attempt), atomically."""
        fields = jobstore.running_fields(self.worker_id, token, time.time())
        got = self._claim(
            keys=[q.key for q in queues],
            args=[
                self.ttl_s, token, self.worker_id, KEY_PREFIX, self.attempts_ttl_s, METRICS_KEY,
                *fields,
            ],
        )  # fmt: skip
        if not got:
            return None
        job_id, queue_key, attempts, cancel = got
        name = _text(queue_key).removeprefix(Queue.redis_queue_namespace_prefix)
        return Lease(_text(job_id), name, token, int(attempts), bool(cancel))

    def renew(self, leases: list[Lease]) -> list[bool]:
        """Push the expiry of the leases forward; False where a lease was already lost."""
        with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                self._renew(args=[KEY_PREFIX, lease.job_id, lease.token, self.ttl_s], client=pipe)
            return [bool(r) for r in pipe.execute()]

    def release(self, lease: Lease, forgive: bool = False) -> bool:
        """End the lease; a job it leaves unfinished goes back to the head of its queue
        (graceful shutdown, a dead engine). `forgive`: this attempt does not count towards
        the job's MAX_ATTEMPTS (a shutdown handed it back; a dead engine may have been this
        job's doing, so it counts). True when the job was requeued."""
        args = [KEY_PREFIX, lease.job_id, lease.token, int(forgive), *jobstore.requeued_fields()]
        return self._release(args=args) == 2

    def sweep(self) -> list[str]:
        """End the expired leases (their workers died); returns the ids of the jobs that went
        back to their queues."""
        return [_text(i) for i in self._sweep(args=[KEY_PREFIX, *jobstore.requeued_fields()])]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
