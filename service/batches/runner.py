"""The gateway thread that drives every active batch: validate it, feed its lines, count its
jobs, stop it (cancel, window passed) and end it.

Every gateway runs one; a batch is driven by one runner at a time, the one that holds its
lock (a Redis key with a token and a time to live, renewed during long validations), so that
gateways sharing a Redis split the batches between them and a gateway that restarts or dies
leaves its batches to the next step of any runner. All of a batch's state is in Redis and
under DATA_DIR: nothing is lost with a gateway.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

import redis

from service.batches import feeder, finalize, store, validate
from service.batches.context import BatchContext
from service.batches.models import BatchStatus
from service.batches.store import BatchRecord, inflight_key

log = logging.getLogger("omnibatch.batches")
STOP_WAIT_S = 10.0
MIN_LOCK_S = 60.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class _Lock:
    def __init__(self, r: redis.Redis, batch_id: str, ttl_s: float):
        self.r, self.key = r, f"{store.batch_key(batch_id)}:lock"
        self.token, self.ttl_ms = secrets.token_hex(8), int(ttl_s * 1000)

    def acquire(self) -> bool:
        return bool(self.r.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> None:
        self.r.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)

    def release(self) -> None:
        self.r.eval(_RELEASE, 1, self.key, self.token)


class BatchRunner:
    def __init__(self, ctx: BatchContext):
        self.ctx = ctx
        # a step may download URLs for up to url_fetch_timeout_s while it holds a batch
        self.lock_s = max(MIN_LOCK_S, ctx.settings.url_fetch_timeout_s + MIN_LOCK_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batches", daemon=True)

    def tick(self) -> None:
        for batch_id in store.active_ids(self.ctx.redis):
            if self._stop.is_set():
                return
            try:
                self.step(batch_id)
            except redis.RedisError:
                raise
            except Exception:  # one broken batch must not stop the others
                log.exception("batch %s: step failed", batch_id)

    def step(self, batch_id: str) -> None:
        lock = _Lock(self.ctx.redis, batch_id, self.lock_s)
        if not lock.acquire():
            return  # another runner holds it
        try:
            self._step(batch_id, lock)
        finally:
            lock.release()

    def _step(self, batch_id: str, lock: _Lock) -> None:
        r, ctx = self.ctx.redis, self.ctx
        rec = store.load(r, batch_id)
        if rec is None or rec.status.terminal:
            r.srem(store.ACTIVE_KEY, batch_id)
            return
        live = rec.status in (BatchStatus.validating, BatchStatus.in_progress)
        if live and time.time() >= rec.expires_at and not rec.stop:
            store.set_fields(r, batch_id, stop="expire")
            rec.stop = "expire"
        if rec.status is BatchStatus.validating and not rec.stop:
            self._validate(rec, lock)
            return
        if rec.status is BatchStatus.finalizing:
            finalize.finalize(ctx, rec)
            return
        stopping = rec.status is BatchStatus.cancelling or rec.stop == "expire"
        queued = feeder.harvest(ctx, rec)
        if stopping:
            feeder.stop_jobs(ctx, rec)
        elif rec.status is BatchStatus.in_progress:
            feeder.feed(ctx, store.load(r, batch_id), queued)
        rec = store.load(r, batch_id)
        if r.hlen(inflight_key(batch_id)) == 0 and (stopping or rec.fed == rec.valid):
            finalize.finalize(ctx, rec)

    def _validate(self, rec: BatchRecord, lock: _Lock) -> None:
        r, now = self.ctx.redis, int(time.time())
        out = validate.validate(r, self.ctx.storage.root, self.ctx.settings, rec, lock.renew)
        if out.file_error is not None or out.valid == 0:
            errors = [out.file_error] if out.file_error is not None else out.errors
            counts = {"total": out.total, "failed": out.invalid} if out.file_error is None else {}
            if store.transition(
                r, rec.id, (BatchStatus.validating,), status=BatchStatus.failed, failed_at=now,
                errors=errors, **counts,
            ):  # fmt: skip
                finalize.end(self.ctx, rec.id)
            return
        store.set_fields(
            r, rec.id, total=out.total, valid=out.valid, failed=out.invalid, model=out.model
        )  # fmt: skip
        store.transition(
            r, rec.id, (BatchStatus.validating,), status=BatchStatus.in_progress, in_progress_at=now
        )
        log.info("batch %s: %d of %d lines valid", rec.id, out.valid, out.total)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except redis.RedisError as exc:  # Redis away: try again later
                log.warning("batches skipped: %s", exc)
            except Exception:
                log.exception("batches failed")
            self._stop.wait(self.ctx.settings.batch_feed_interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_WAIT_S)
