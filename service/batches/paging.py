"""OpenAI-style list pages (`after` = the last id of the previous page, `has_more`) over an
owner index: a sorted set whose members, ids that begin with their creation time, all score
0, so that they sort lexically in creation order (the job list's scheme, service/joblist.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis

T = TypeVar("T")
AFTER_DESCRIPTION = "`last_id` of the previous page; empty or absent: the first page"


def after_pattern(id_re: re.Pattern[str]) -> str:
    """What an `after` query parameter may be: an id that `id_re` matches, or empty."""
    return f"^({id_re.pattern.strip('^$')})?$"


def page(
    r: redis.Redis,
    key: str,
    after: str | None,
    limit: int,
    load: Callable[[list[str]], Sequence[T | None]],
    *,
    desc: bool = True,
    keep: Callable[[T], bool] = lambda _rec: True,
) -> tuple[list[T], bool]:
    """Up to `limit` records after the id `after` (newest first when `desc`) that `keep`
    accepts, and whether more follow. `load` gives None for ids whose record has gone (its
    retention ended); their index entries are dropped here."""
    found: list[T] = []
    start = f"({after}" if after else ("+" if desc else "-")
    end = "-" if desc else "+"
    while len(found) <= limit:
        raw = r.zrange(key, start, end, desc=desc, bylex=True, offset=0, num=limit + 1)
        if not raw:
            break
        ids = [i.decode() for i in raw]
        records = load(ids)
        gone = [i for i, rec in zip(ids, records, strict=True) if rec is None]
        if gone:
            r.zrem(key, *gone)
        found += [rec for rec in records if rec is not None and keep(rec)]
        start = f"({ids[-1]}"
    return found[:limit], len(found) > limit
