"""Submit rate limit per API key: a token bucket in Redis, shared by every gateway.

The bucket holds up to one minute's worth of submits (`per_minute` tokens) and refills at
`per_minute / 60` tokens a second; a submit takes one token. Redis: hash
`omnibatch:ratelimit:{owner}` {tokens, at}, which expires once it would be full again (a
missing bucket is a full one). The time is the Redis server's, so gateways need not agree.
"""

from __future__ import annotations

import redis

from contract.schemas import KEY_PREFIX

# KEYS[1]: the bucket. ARGV: capacity, refill per second. Returns the seconds until a token
# is free, as text (a Lua number would reach Redis truncated to an integer); "0": taken.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


def bucket_key(owner: str) -> str:
    return f"{KEY_PREFIX}ratelimit:{owner}"


def take(r: redis.Redis, owner: str, per_minute: int) -> float:
    """Take a token for one submit by `owner`: 0.0 when allowed, else the seconds to wait."""
    return float(r.eval(_TAKE, 1, bucket_key(owner), per_minute, per_minute / 60))
