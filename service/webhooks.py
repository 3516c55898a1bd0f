"""Webhook signing (Standard Webhooks) and delivery with retries.

Events are written by `jobstore.finish` (contract/events.py) and delivered by
`deliver(event_id)`, an RQ job on the `webhooks` queue. `run_delivery_worker(settings)` runs
that queue, and RQ's scheduler (which releases the delayed retries) in a thread beside it:
both outlive a Redis outage and resume within seconds of its end. One attempt: SSRF check,
POST without following redirects, then
    2xx within the timeout (one deadline for connect, send and response) → delivered;
    410 → stopped;
    anything else (3xx, 4xx, 5xx, no answer, refused URL) → retried after Retry-After when
    the receiver sent one, else exponential backoff with jitter, until the retry window
    (≥ 24 h) has passed since the first attempt.
The job's `webhook {attempts, last_status, delivered_at, state}` follows every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
import redis
from rq import Queue, SimpleWorker, get_current_job
from rq.scheduler import RQScheduler

from contract import events, jobstore, metrics
from contract.schemas import WEBHOOK_QUEUE, WebhookState
from contract.settings import DeliverySettings
from service.errors import OmnibatchError
from service.urlguard import Target, UrlGuard

log = logging.getLogger("omnibatch.webhooks")
T = TypeVar("T")
MASTER_KEY = "omnibatch:webhook_master"
SCHEDULE_EVERY_S = 1.0  # how late a due retry may be released
REDIS_WAIT_S, REDIS_PATIENCE_S = 1.0, 300.0  # an attempt waits this long for Redis to return
RESTART_AFTER_S = 1.0  # a delivery loop that lost Redis starts again after this


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}`, keyed by the decoded secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Receiver side of `sign` (used by our tests and CLI); accepts any listed v1 signature."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    offered = headers["webhook-signature"].split()
    return any(hmac.compare_digest(expected, s) for s in offered)


def default_secret(r: redis.Redis, owner: str, master: str | None) -> str:
    """The per-key signing secret: derived from the configured master secret, or from a random
    one created once in Redis (so every gateway derives the same)."""
    if master is None:
        r.set(MASTER_KEY, secrets.token_urlsafe(32), nx=True)
        master = r.get(MASTER_KEY).decode()
    mac = hmac.new(master.encode(), b"omnibatch-webhook:" + owner.encode(), hashlib.sha256)
    return "whsec_" + base64.b64encode(mac.digest()).decode()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _backoff(settings: DeliverySettings, attempts: int) -> float:
    ceiling = min(
        settings.webhook_backoff_max_s, settings.webhook_backoff_base_s * 2 ** (attempts - 1)
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _post(settings: DeliverySettings, url: str, msg_id: str, secret: str, body: bytes):
    """One POST to a freshly checked address. Returns (status or None, Retry-After value)."""
    try:
        target = UrlGuard(settings.allow_private_urls).resolve(url)
    except OmnibatchError as exc:
        log.warning("webhook %s refused: %s", msg_id, exc.detail)
        return None, None
    ts = int(time.time())
    headers = {
        "content-type": "application/json",
        "host": target.host_header,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }
    try:
        return asyncio.run(_send(target, headers, body, settings.webhook_timeout_s))
    except (httpx.HTTPError, TimeoutError) as exc:
        log.info("webhook %s: %s", msg_id, type(exc).__name__)
        return None, None


async def _send(target: Target, headers: dict[str, str], body: bytes, timeout_s: float):
    """POST under one deadline for the whole exchange: httpx's timeouts bound each read and
    write, so a receiver trickling its answer a byte at a time would never trip them. The
    receiver's body is never read: only its status and Retry-After matter."""
    async with (
        asyncio.timeout(timeout_s),
        httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client,
        client.stream(
            "POST", target.connect_url, content=body, headers=headers,
            extensions={"sni_hostname": target.sni_host},
        ) as resp,
    ):  # fmt: skip
        return resp.status_code, resp.headers.get("retry-after")


def _patiently(what: str, fn: Callable[..., T], *args) -> T:
    """`fn(*args)`, tried again while Redis is away (a restart), for up to REDIS_PATIENCE_S:
    an attempt cut off half-way would be dropped, as RQ cannot record its failure either."""
    deadline = time.monotonic() + REDIS_PATIENCE_S
    while True:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("webhook: %s: %s; again in %g s", what, exc, REDIS_WAIT_S)
            time.sleep(REDIS_WAIT_S)


def _take(r: redis.Redis, event_id: str) -> tuple[dict[str, str], int]:
    ekey = events.event_key(event_id)
    event = {k.decode(): v.decode() for k, v in r.hgetall(ekey).items()}
    return event, (r.hincrby(ekey, "attempts", 1) if event else 0)


def _record(r, event_id: str, job_id: str, state: WebhookState, outcome: str, delay: float):
    """The attempt's outcome, its next attempt (if any) and its counter, in one transaction."""
    with r.pipeline() as pipe:
        pipe.multi()
        if outcome == "retried":
            Queue(WEBHOOK_QUEUE, connection=r).enqueue_in(
                timedelta(seconds=delay), events.WEBHOOK_FUNCTION, event_id, result_ttl=0,
                pipeline=pipe,
            )  # fmt: skip
        else:
            pipe.expire(events.event_key(event_id), 7 * 24 * 3600)
        jobstore.update_webhook_state(pipe, job_id, state)
        metrics.incr(pipe, f"webhook_{outcome}")
        pipe.execute()


def attempt(r: redis.Redis, settings: DeliverySettings, event_id: str) -> str:
    """Make one delivery attempt; returns delivered | gone | retried | abandoned | missing."""
    event, attempts = _patiently("reading the event", _take, r, event_id)
    if not event:
        return "missing"
    status, retry_after = _post(
        settings, event["url"], event_id, event["secret"], event["body"].encode()
    )
    state = WebhookState(attempts=attempts, last_status=status)
    now, delay = time.time(), 0.0
    if status is not None and 200 <= status < 300:
        outcome = "delivered"
        state.state, state.delivered_at = "delivered", datetime.fromtimestamp(now, UTC)
    elif status == 410:
        outcome, state.state = "gone", "failed"
    else:
        delay = _retry_after(retry_after)
        delay = _backoff(settings, attempts) if delay is None else delay
        if now + delay - float(event["first_attempt_at"]) > settings.webhook_retry_window_s:
            outcome, state.state = "abandoned", "failed"
        else:
            outcome = "retried"
            state.next_attempt_at = datetime.fromtimestamp(now + delay, UTC)
    args = (r, event_id, event["job_id"], state, outcome, delay)
    _patiently("recording the attempt", _record, *args)
    return outcome


def deliver(event_id: str) -> str:
    """The RQ job function: one attempt with this process's DeliverySettings."""
    return attempt(get_current_job().connection, DeliverySettings(), event_id)


class _DeliveryWorker(SimpleWorker):
    """RQ's in-process worker, retrying a lost Redis every few seconds (RQ: up to a minute)
    and telling `run_delivery_worker` when it was asked to stop."""

    max_connection_wait_time = 5.0

    def __init__(self, *args, stop: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop = stop

    def request_stop(self, signum, frame):
        self.stop.set()
        super().request_stop(signum, frame)

    def subscribe(self) -> None:
        """No pubsub thread for RQ's remote commands (unused here): stopping it waits out its
        60 s poll, which held every SIGTERM for up to a minute."""


def _release_retries(conn: redis.Redis, stop: threading.Event) -> None:
    """RQ's scheduler, in a thread: it moves due retries from the scheduled registry to the
    queue. RQ runs it as a forked process that dies at the first Redis error and is restarted
    only between two dequeues, up to 7 minutes later; here a Redis error skips one round."""
    scheduler = RQScheduler([WEBHOOK_QUEUE], connection=conn)
    while not stop.wait(SCHEDULE_EVERY_S):
        try:
            if scheduler.acquired_locks:
                scheduler.heartbeat()  # drops a lock another scheduler took over
            else:
                scheduler.acquire_locks()
            if scheduler.acquired_locks:
                scheduler.enqueue_scheduled_jobs()
        except redis.RedisError as exc:
            log.warning("releasing due retries failed: %s", exc)
    with contextlib.suppress(redis.RedisError):  # else the lock expires
        scheduler.release_locks()


def run_delivery_worker(settings: DeliverySettings) -> None:
    """Consume the `webhooks` queue in this process (no fork per delivery) beside the thread
    that releases delayed retries. Blocks; SIGTERM stops it after the current delivery. An
    RQ work loop that ends on a Redis error (RQ gives up then) is started again."""
    conn = jobstore.connect(settings.redis_url)
    stop = threading.Event()
    scheduler = threading.Thread(target=_release_retries, args=(conn, stop), name="scheduler")
    scheduler.start()
    try:
        while not stop.is_set():
            queue = Queue(WEBHOOK_QUEUE, connection=conn)
            try:
                worker = _DeliveryWorker([queue], connection=conn, stop=stop)
                worker.work()  # installs RQ's signal handlers for its run
            except redis.RedisError as exc:
                log.warning("delivery loop lost Redis: %s", exc)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait(RESTART_AFTER_S)
    finally:
        stop.set()
        scheduler.join()
