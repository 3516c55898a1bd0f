"""Webhook events: Standard Webhooks signatures, delivery outcomes, retries, the SSRF check at
every attempt, and the real delivery worker process against a loopback receiver."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from rq import Queue
from rq.registry import ScheduledJobRegistry

from contract import jobstore
from contract.events import WEBHOOK_FUNCTION, event_key
from contract.schemas import WEBHOOK_QUEUE, JobStatus, Output, WebhookEvent
from contract.settings import DeliverySettings
from service import webhooks
from tests.service.conftest import png_bytes, serve_app
from tests.service.test_lifecycle import take
from tests.service.test_submit import form

pytestmark = pytest.mark.anyio
LOOPBACK = ["127.0.0.1/32"]
# The published Standard Webhooks test vector.
VECTOR = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330)


def test_signature_matches_the_standard_webhooks_vector():
    secret, msg_id, ts = VECTOR
    sig = webhooks.sign(secret, msg_id, ts, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}
    assert webhooks.verify(secret, headers, b'{"test": 2432232314}')
    assert not webhooks.verify(secret, headers, b'{"test": 2432232315}')


async def finished_job_event(
    settings, redis_client, receiver, webhook: dict | None = None, **overrides
):
    """Submit a job with a webhook to `receiver`, finish it; returns (job_id, event_id, secret)."""
    async with serve_app(settings(allow_private_urls=LOOPBACK, **overrides)) as api:
        request = {
            "webhook": {"url": f"{receiver.url}/hook"} | (webhook or {}),
            "metadata": {"a": "1"},
        }
        job_id = (await api.post("/v1/jobs", files=form(png_bytes(), request))).json()["id"]
        secret = (await api.get("/v1/webhook-secret")).json()["secret"]
        assert take(redis_client, job_id)
        jobstore.finish(
            redis_client,
            api.app_state.storage,
            job_id,
            JobStatus.succeeded,
            output=Output(text="z"),
        )
    queued = Queue(WEBHOOK_QUEUE, connection=redis_client).jobs
    assert len(queued) == 1 and queued[0].func_name == WEBHOOK_FUNCTION
    return job_id, queued[0].args[0], webhook.get("secret") if webhook else secret


async def attempt(r, settings: DeliverySettings, event_id: str) -> str:
    """One delivery attempt, off the event loop as in the delivery worker (it runs its own)."""
    return await asyncio.to_thread(webhooks.attempt, r, settings, event_id)


def delivery(**overrides) -> DeliverySettings:
    return DeliverySettings(**({"allow_private_urls": LOOPBACK} | overrides))


async def test_delivered_event_is_signed_and_recorded(settings, redis_client, receiver):
    job_id, event_id, secret = await finished_job_event(settings, redis_client, receiver)
    assert await attempt(redis_client, delivery(), event_id) == "delivered"
    path, headers, body = receiver.requests[0]
    assert path == "/hook" and webhooks.verify(secret, headers, body)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    event = WebhookEvent.model_validate_json(body)
    assert event.type == "job.succeeded" and event.id == headers["webhook-id"] == event_id
    assert event.data.job_id == job_id and event.data.metadata == {"a": "1"}
    assert event.data.result_url == f"http://testserver/v1/jobs/{job_id}/result"
    state = jobstore.load(redis_client, job_id).webhook
    assert state.state == "delivered" and state.attempts == 1 and state.last_status == 200
    assert state.delivered_at is not None


async def test_job_secret_overrides_the_key_default(settings, redis_client, receiver):
    own = "whsec_" + "c2VjcmV0LW9mLXRoaXMtam9i"
    _, event_id, _ = await finished_job_event(settings, redis_client, receiver, {"secret": own})
    await attempt(redis_client, delivery(), event_id)
    _, headers, body = receiver.requests[0]
    assert webhooks.verify(own, headers, body)


@pytest.mark.parametrize(
    ("reply", "lo", "hi"),
    [
        ((500, {}, b""), 0.5, 1.0),  # backoff base 1 s, first attempt: in [0.5, 1]
        ((302, {"Location": "http://127.0.0.1:9/"}, b""), 0.5, 1.0),  # 3xx is a failure
        ((503, {"Retry-After": "120"}, b""), 119, 121),
        ((429, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}, b""), None, None),
    ],
    ids=["500", "302", "retry-after-seconds", "retry-after-date-too-far"],
)
async def test_failed_attempts_are_rescheduled(settings, redis_client, receiver, reply, lo, hi):
    job_id, event_id, _ = await finished_job_event(settings, redis_client, receiver)
    receiver.replies = [reply]
    Queue(WEBHOOK_QUEUE, connection=redis_client).empty()
    before = time.time()
    outcome = await attempt(redis_client, delivery(webhook_backoff_base_s=1.0), event_id)
    registry = ScheduledJobRegistry(WEBHOOK_QUEUE, connection=redis_client)
    state = jobstore.load(redis_client, job_id).webhook
    assert state.attempts == 1 and state.last_status == reply[0]
    if lo is None:  # beyond the retry window: given up
        assert outcome == "abandoned" and state.state == "failed"
        assert registry.get_job_ids() == []
        return
    assert outcome == "retried" and state.state == "pending"
    (scheduled,) = registry.get_job_ids()
    when = registry.get_scheduled_time(scheduled).timestamp()
    assert before + lo - 1 <= when <= time.time() + hi + 1
    assert abs(state.next_attempt_at.timestamp() - when) < 1.5


async def test_gone_stops_retrying(settings, redis_client, receiver):
    job_id, event_id, _ = await finished_job_event(settings, redis_client, receiver)
    receiver.replies = [(410, {}, b"")]
    assert await attempt(redis_client, delivery(), event_id) == "gone"
    assert ScheduledJobRegistry(WEBHOOK_QUEUE, connection=redis_client).get_job_ids() == []
    assert jobstore.load(redis_client, job_id).webhook.state == "failed"


class TrickleServer:
    """Takes one request, then answers its status line and headers a byte every `gap` s: each
    read gets data well within any per-read timeout, the whole answer takes ~`gap` × 250."""

    def __init__(self, gap: float):
        self.gap = gap
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            conn.recv(1 << 16)
            head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 220 + b"\r\nContent-Length: 0\r\n\r\n"
            for i in range(len(head)):
                if self.stopped.wait(self.gap):
                    return
                try:
                    conn.sendall(head[i : i + 1])
                except OSError:  # the client gave up
                    return

    def close(self) -> None:
        self.stopped.set()
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        self.sock.close()
        self.thread.join(5)


async def test_timeout_bounds_the_whole_attempt(settings, redis_client, receiver):
    job_id, event_id, _ = await finished_job_event(settings, redis_client, receiver)
    trickle = TrickleServer(gap=0.05)
    try:
        redis_client.hset(event_key(event_id), "url", trickle.url)
        start = time.monotonic()
        outcome = await attempt(redis_client, delivery(webhook_timeout_s=0.5), event_id)
        elapsed = time.monotonic() - start
    finally:
        trickle.close()
    assert outcome == "retried" and elapsed < 3  # the full answer would take > 12 s
    state = jobstore.load(redis_client, job_id).webhook
    assert state.attempts == 1 and state.last_status is None and state.state == "pending"


async def test_ssrf_guard_runs_at_every_attempt(settings, redis_client, receiver):
    """Allowed when submitted; no longer allowed for the delivery process: nothing is sent."""
    job_id, event_id, _ = await finished_job_event(settings, redis_client, receiver)
    assert await attempt(redis_client, delivery(allow_private_urls=[]), event_id) == "retried"
    assert receiver.requests == []
    state = jobstore.load(redis_client, job_id).webhook
    assert state.attempts == 1 and state.last_status is None


def start_delivery_process(redis_url: str, backoff_s: float) -> subprocess.Popen:
    env = os.environ | {
        "OMNIBATCH_REDIS_URL": redis_url,
        "OMNIBATCH_ALLOW_PRIVATE_URLS": "127.0.0.1/32",
        "OMNIBATCH_WEBHOOK_BACKOFF_BASE_S": str(backoff_s),
    }
    cmd = [sys.executable, "-m", "cli.main", "webhooks"]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)


async def test_delivery_worker_process_retries_until_delivered(settings, redis_client, receiver):
    job_id, _, secret = await finished_job_event(settings, redis_client, receiver)
    receiver.replies = [(503, {}, b""), (200, {}, b"")]
    proc = start_delivery_process(settings().redis_url, backoff_s=0.2)
    try:
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
    assert len(receiver.requests) == 2
    (_, h1, b1), (_, h2, b2) = receiver.requests
    assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2  # same event, re-signed
    assert webhooks.verify(secret, h2, b2)
    deadline = time.monotonic() + 5
    while jobstore.load(redis_client, job_id).webhook.state != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert jobstore.load(redis_client, job_id).webhook.attempts == 2
    assert json.loads(b2)["data"]["status"] == "succeeded"
    assert datetime.now(UTC) >= jobstore.load(redis_client, job_id).webhook.delivered_at


async def test_retries_resume_promptly_after_a_redis_restart(settings, make_redis_server, receiver):
    """RQ's own scheduler process dies with the first Redis error and came back only minutes
    later; the delivery process must release the retry within seconds of Redis's return."""
    server = make_redis_server(aof=True)
    r = jobstore.connect(server.url)
    await finished_job_event(settings, r, receiver, redis_url=server.url)
    receiver.replies = [(503, {}, b""), (200, {}, b"")]
    proc = start_delivery_process(server.url, backoff_s=3.0)  # the retry comes 1.5-3 s later
    try:
        deadline = time.monotonic() + 30
        while not receiver.requests:
            assert time.monotonic() < deadline, "no first attempt"
            time.sleep(0.05)
        # Busy with other deliveries (of events gone by now) when Redis goes: RQ's loop then
        # quits on the error inside a job, and must be started again.
        flood = Queue(WEBHOOK_QUEUE, connection=r)
        for i in range(300):
            flood.enqueue(WEBHOOK_FUNCTION, f"evt_gone{i}", result_ttl=0)
        server.stop()  # while the retry waits in the scheduled registry (kept by the AOF)
        time.sleep(3.0)
        server.start()
        back = time.monotonic()
        while len(receiver.requests) < 2:
            assert time.monotonic() - back < 15, "the retry stalled after the Redis restart"
            time.sleep(0.1)
        assert proc.poll() is None, "the delivery process survived the outage"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, "SIGTERM stops it cleanly"
        r.close()
