"""The worker's one reader of cancel flags and writer of progress, for all its jobs at once.

Hundreds of job threads each polling Redis on their own were hundreds of concurrent requests
on one connection pool (they exhausted it). Instead a job thread only sets its Attempt's
`progress` (and `media_type`) and reads its `cancel` event (workers/tasks.py), and this watch,
every `WATCH_INTERVAL_S`, reads every job's cancel flag and writes the progress that changed,
in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from contract import jobstore
from contract.schemas import cancel_key
from workers.tasks import Attempt

WATCH_INTERVAL_S = 0.25  # how stale a cancel flag read at a safe point may be


class JobWatch:
    def __init__(self, r: Redis, in_flight: Callable[[], list[Attempt]]):
        self.r = r
        self.in_flight = in_flight
        # job id → (progress, media type) last written
        self._written: dict[str, tuple[tuple[str, int, int], str | None]] = {}

    def tick(self) -> None:
        """One round trip: flags read, changed progress written. Raises Redis errors (the
        caller tries again next tick)."""
        attempts = self.in_flight()
        changed = []
        for a in attempts:
            state = (a.progress, a.media_type)
            if a.progress is not None and self._written.get(a.lease.job_id) != state:
                changed.append((a, state))
        if not attempts:
            self._written.clear()
            return
        with self.r.pipeline(transaction=False) as pipe:
            for a in attempts:
                pipe.exists(cancel_key(a.lease.job_id))
            for a, (progress, media_type) in changed:
                jobstore.set_progress(
                    pipe, a.lease.job_id, a.lease.token, *progress, media_type=media_type
                )
            flags = pipe.execute()[: len(attempts)]
        for a, flag in zip(attempts, flags, strict=True):
            if flag:
                a.cancel.set()
        live = {a.lease.job_id for a in attempts}
        self._written = {k: v for k, v in self._written.items() if k in live}
        self._written.update((a.lease.job_id, state) for a, state in changed)
