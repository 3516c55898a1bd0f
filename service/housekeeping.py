"""The gateway's periodic chores, in a background thread for the app's lifetime: expire jobs
queued too long (service/expiry.py), remove finished jobs whose retention has passed
(contract/retention.py) and files whose time has passed (service/batches/filestore.py). The
batch runner (service/batches/runner.py), a chore of its own pace, starts and stops with it.

Every gateway runs them; both are idempotent compare-and-sets and deletes, so several
gateways sweeping at once only repeat each other's work. A thread rather than an asyncio task
because the sweeps are blocking Redis and file calls, and a thread is stopped and joined
cleanly at shutdown, before the Redis client is closed.
"""

from __future__ import annotations

import logging
import threading

import redis

from contract import retention
from contract.settings import GatewaySettings
from contract.storage import Storage
from service import expiry
from service.batches import filestore
from service.batches.context import BatchContext
from service.batches.runner import BatchRunner
from service.urlguard import UrlGuard

log = logging.getLogger("omnibatch.housekeeping")
STOP_WAIT_S = 10.0  # a sweep stuck on an unreachable Redis is left behind (daemon thread)


class Housekeeper:
    def __init__(self, r: redis.Redis, storage: Storage, settings: GatewaySettings):
        self.r, self.storage, self.settings = r, storage, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        guard = UrlGuard(settings.allow_private_urls)
        self.batches = BatchRunner(BatchContext(r, storage, settings, guard))

    def sweep(self) -> None:
        expired = expiry.sweep(self.r, self.storage, self.settings.max_queue_age_s)
        removed = retention.sweep(self.r, self.storage)
        files = filestore.sweep(self.r, self.storage.root)
        if expired or removed or files:
            log.info(
                "expired %d queued jobs, removed %d finished ones and %d files",
                len(expired), len(removed), len(files),
            )  # fmt: skip

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except redis.RedisError as exc:  # Redis away: /readyz says so; try again later
                log.warning("housekeeping skipped: %s", exc)
            except Exception:
                log.exception("housekeeping failed")
            self._stop.wait(self.settings.housekeeping_interval_s)

    def start(self) -> None:
        self._thread.start()
        self.batches.start()

    def stop(self) -> None:
        self._stop.set()
        self.batches.stop()
        self._thread.join(STOP_WAIT_S)
