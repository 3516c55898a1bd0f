"""`Idempotency-Key`: the first job submitted with a key answers every later submit that
repeats the same request under the same key, per API key, for `idempotency_ttl_s`.

Redis: string `omnibatch:idem:{owner}:{key}` = `{job_id} {request fingerprint}`.
"""

from __future__ import annotations

import redis

from contract.schemas import KEY_PREFIX, job_key


def claim(
    r: redis.Redis, owner: str, key: str, fingerprint: str, job_id: str, ttl_s: int
) -> str | None:
    """Returns None when `job_id` now owns `key`; the first job's id when the same request was
    seen; raises ValueError when the key was used for a different request."""
    rkey = f"{KEY_PREFIX}idem:{owner}:{key}"
    value = f"{job_id} {fingerprint}"
    if r.set(rkey, value, nx=True, ex=ttl_s):
        return None
    raw = r.get(rkey)
    if raw is None:  # expired between the two calls: claim it afresh
        return claim(r, owner, key, fingerprint, job_id, ttl_s)
    first_id, _, first_fp = raw.decode().partition(" ")
    if first_fp != fingerprint:
        raise ValueError("this Idempotency-Key was used with a different request")
    if not r.exists(job_key(first_id)):  # the first job is gone: this request takes over
        r.set(rkey, value, ex=ttl_s)
        return None
    return first_id
