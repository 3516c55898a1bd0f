"""Failures the service must survive: a worker SIGKILLed mid-job, a Redis restart, SIGTERM."""

from __future__ import annotations

import signal
import time

import httpx

from contract.schemas import WORKER_HEARTBEAT_TTL_S
from service.webhooks import verify
from tests.e2e.conftest import WEBHOOK_SECRET

SLOW = {"generation": {"max_tokens": 64}, "video": {"fps": 2, "chunk_s": 1.0}}


def _generating(job: dict) -> bool:
    return job["progress"]["stage"] == "generating"


def test_worker_killed_mid_job_finishes_exactly_once(stack, media, receiver):
    stack.spawn("webhooks", "webhooks")
    stack.start_worker("first")
    hook = {"url": receiver.url, "secret": WEBHOOK_SECRET}
    job_id = stack.submit(media["medium_video"], webhook=hook, **SLOW)
    orphan = stack.submit(media["medium_video"], **SLOW)
    stack.wait_for(job_id, _generating)
    stack.wait_for(orphan, _generating)
    assert stack.stop("first", signal.SIGKILL) == -signal.SIGKILL
    # Running on a dead worker: its cancel waits for the next worker, which ends it unrun.
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{orphan}/cancel").json()["status"] == "running"

    # With no worker alive a new job stays queued: cancelling it is immediate.
    queued = stack.submit(media["image"], webhook=hook, generation={"max_tokens": 2})
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{queued}/cancel").status_code == 202
    cancelled = stack.job(queued)
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None

    killed = time.monotonic()
    while httpx.get(f"{stack.base}/readyz").status_code != 503:  # the heartbeat expires
        assert time.monotonic() - killed < WORKER_HEARTBEAT_TTL_S + 2, "ready with no worker"
        time.sleep(0.2)

    stack.start_worker("second")
    job = stack.finished(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    ended = stack.finished(orphan)
    assert ended["status"] == "cancelled" and ended["usage"]["output_tokens"] == 0, ended
    assert stack.metric("omnibatch_jobs_started_total") == 2, "each job counted once"
    assert stack.metric("omnibatch_job_attempts_total") == 4, "both taken again after the kill"
    assert stack.metric('omnibatch_jobs_finished_total{status="succeeded"}') == 1
    assert stack.metric('omnibatch_jobs_finished_total{status="cancelled"}') == 2

    stack.wait_for(job_id, lambda j: (j.get("webhook") or {}).get("state") == "delivered")
    time.sleep(1.0)  # room for a duplicate to show up
    deliveries = receiver.for_job(job_id)
    assert len(deliveries) == 1, "finished exactly once"
    assert verify(WEBHOOK_SECRET, *deliveries[0])
    assert [b for _, b in receiver.for_job(queued)], "the cancelled job's webhook arrived"
    assert stack.job(queued)["status"] == "cancelled", "the new worker never ran it"


def test_redis_restarts_lose_no_job_and_fail_none(stack, media):
    ids = [stack.submit(media[k], generation={"max_tokens": 2}) for k in ("image", "audio")]
    ids.append(stack.submit(media["image"], priority="high", generation={"max_tokens": 2}))
    assert {stack.job(i)["status"] for i in ids} == {"queued"}

    stack.redis.stop()
    stack.redis.start()

    stack.start_worker()
    for job_id in ids:
        assert stack.finished(job_id)["status"] == "succeeded"

    # Again while jobs run, for longer than redis-py's own retries last (about 3 s): the
    # jobs that end meanwhile wait to record it, and each job ends once.
    running = [stack.submit(media["medium_video"], **SLOW) for _ in range(3)]
    stack.wait_for(running[0], _generating)
    stack.redis.stop()
    time.sleep(5.0)
    stack.redis.start()
    assert [stack.finished(j)["status"] for j in running] == ["succeeded"] * 3
    assert stack.metric('omnibatch_jobs_finished_total{status="succeeded"}') == 6
    assert stack.metric("omnibatch_jobs_finished_total") == 6


def test_sigterm_gives_unfinished_jobs_back_or_lets_them_finish(stack, media):
    stack.env["OMNIBATCH_SHUTDOWN_GRACE_S"] = "0"
    stack.start_worker("leaving")
    job_id = stack.submit(media["medium_video"], **SLOW)
    stack.wait_for(job_id, _generating)
    assert stack.stop("leaving", signal.SIGTERM) == 0
    assert stack.job(job_id)["status"] == "queued", "handed back, not lost or failed"

    stack.env["OMNIBATCH_SHUTDOWN_GRACE_S"] = "60"
    stack.start_worker("staying")
    stack.wait_for(job_id, _generating)
    assert stack.stop("staying", signal.SIGTERM, timeout=90) == 0
    assert stack.job(job_id)["status"] == "succeeded", "finished within the grace period"


def test_a_job_past_its_timeout_fails_with_timeout(stack, media):
    assert stack.stop("gateway") == 0, "SIGTERM: a graceful exit, not death by the signal"
    stack.env["OMNIBATCH_JOB_TIMEOUT_S"] = "1"
    stack.start_gateway()
    stack.start_worker()
    job_id = stack.submit(media["long_video"], generation={"max_tokens": 512})
    job = stack.finished(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
    assert job["finished_at"] is not None
