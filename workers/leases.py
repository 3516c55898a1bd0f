"""Job leases: how a worker takes a job off an RQ queue without losing it if it dies.

RQ's own worker moves a job from the queue list to its StartedJobRegistry in two steps and
forks per job; our worker is one long-lived process running many jobs, so it keeps its own
lease per job, taken in the same atomic step that pops the id:

- `omnibatch:leases`          sorted set, member job id, score = lease expiry (unix seconds)
- `omnibatch:lease:{job_id}`  hash {token, worker, queue}: who holds it, where it came from
- `omnibatch:job:{job_id}:attempts`  how many times the job was taken

The holder renews its leases with every heartbeat. A lease that expires means the worker
died (SIGKILL, OOM, lost host): any worker's sweep pushes the job back to the head of the
queue it came from. Every step is one Lua script, so two sweepers cannot requeue a job twice
and a pop can never leave a job in neither the queue nor the lease set.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue

from service.schemas import KEY_PREFIX

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

# KEYS: queue lists in priority order. ARGV: ttl, token, worker, key prefix, attempts ttl.
_CLAIM = (
    _NOW
    + """
for i, queue in ipairs(KEYS) do
  local id = redis.call('LPOP', queue)
  if id then
    local lease = ARGV[4] .. 'lease:' .. id
    redis.call('ZADD', ARGV[4] .. 'leases', now + tonumber(ARGV[1]), id)
    redis.call('HSET', lease, 'token', ARGV[2], 'worker', ARGV[3], 'queue', queue)
    local attempts = redis.call('INCR', ARGV[4] .. 'job:' .. id .. ':attempts')
    redis.call('EXPIRE', ARGV[4] .. 'job:' .. id .. ':attempts', ARGV[5])
    return {id, queue, attempts}
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

# ARGV: key prefix, job id, token, requeue (1/0). Ends a lease only if the caller holds it.
_RELEASE = """
local lease = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('HGET', lease, 'token') ~= ARGV[3] then return 0 end
if ARGV[4] == '1' then
  redis.call('LPUSH', redis.call('HGET', lease, 'queue'), ARGV[2])
else
  redis.call('DEL', ARGV[1] .. 'job:' .. ARGV[2] .. ':attempts')
end
redis.call('DEL', lease)
redis.call('ZREM', ARGV[1] .. 'leases', ARGV[2])
return 1
"""

# ARGV: key prefix. Requeues every job whose lease expired; returns their ids.
_SWEEP = (
    _NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'leases', '-inf', now)
for i, id in ipairs(ids) do
  local queue = redis.call('HGET', ARGV[1] .. 'lease:' .. id, 'queue')
  if queue then redis.call('LPUSH', queue, id) end
  redis.call('DEL', ARGV[1] .. 'lease:' .. id)
  redis.call('ZREM', ARGV[1] .. 'leases', id)
end
return ids
"""
)


@dataclass(frozen=True)
class Lease:
    job_id: str
    queue: str  # RQ queue name the job was taken from
    token: str  # unique per attempt: only its holder may finish or renew it
    attempts: int  # this attempt's number, 1 for the first


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
        """Pop the first job id of the first non-empty queue and lease it, atomically."""
        got = self._claim(
            keys=[q.key for q in queues],
            args=[self.ttl_s, token, self.worker_id, KEY_PREFIX, self.attempts_ttl_s],
        )
        if not got:
            return None
        job_id, queue_key, attempts = got
        name = _text(queue_key).removeprefix(Queue.redis_queue_namespace_prefix)
        return Lease(_text(job_id), name, token, int(attempts))

    def renew(self, leases: list[Lease]) -> list[bool]:
        """Push the expiry of the leases forward; False where a lease was already lost."""
        with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                self._renew(args=[KEY_PREFIX, lease.job_id, lease.token, self.ttl_s], client=pipe)
            return [bool(r) for r in pipe.execute()]

    def finish(self, lease: Lease) -> bool:
        """End the lease for good. False: it was lost (expired and swept) before this."""
        return bool(self._release(args=[KEY_PREFIX, lease.job_id, lease.token, 0]))

    def requeue(self, lease: Lease) -> bool:
        """Hand the job back to the head of its queue (graceful shutdown)."""
        return bool(self._release(args=[KEY_PREFIX, lease.job_id, lease.token, 1]))

    def holds(self, lease: Lease) -> bool:
        return _text(self.redis.hget(lease_key(lease.job_id), "token") or b"") == lease.token

    def expired(self) -> list[str]:
        seconds, micros = self.redis.time()
        now = seconds + micros / 1e6
        return [_text(i) for i in self.redis.zrangebyscore(LEASES_KEY, "-inf", now)]

    def sweep(self) -> list[str]:
        """Requeue the jobs of dead workers (expired leases); returns their ids."""
        return [_text(i) for i in self._sweep(args=[KEY_PREFIX])]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
