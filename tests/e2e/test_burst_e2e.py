"""A burst at the default concurrency: more jobs than one worker holds at once (256), all
taken together, all finished exactly once. Before the worker's Redis use was bounded, 256 job
threads polling Redis on their own exhausted the client's 100 connections: failed jobs,
lost leases, requeues and jobs stuck running."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from workers.leases import LEASES_KEY

BURST = 320
DEFAULT_IN_FLIGHT = 256  # WorkerSettings.max_concurrent_jobs


def _submit_all(stack, path, n: int) -> list[str]:
    body = path.read_bytes()
    request = json.dumps({"generation": {"max_tokens": 8}})
    local = threading.local()

    def one(_: int) -> str:
        if not hasattr(local, "client"):
            local.client = stack.client()
        resp = local.client.post(
            "/v1/jobs", files={"file": (path.name, body)}, data={"request": request}
        )
        assert resp.status_code == 202, resp.text
        return resp.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_a_burst_past_the_default_concurrency_all_succeeds(stack, media):
    for name in ("OMNIBATCH_MAX_CONCURRENT_JOBS", "OMNIBATCH_LEASE_TTL_S"):
        stack.env.pop(name)  # the defaults: 256 jobs in flight, 30 s leases
    ids = _submit_all(stack, media["image"], BURST)
    r = redis.Redis.from_url(stack.redis.url)
    stack.start_worker()  # all queued first: the worker takes as many as it may at once
    peak, deadline = 0, time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            peak = max(peak, r.zcard(LEASES_KEY))
            if stack.metric("omnibatch_jobs_finished_total") >= BURST:
                break
            time.sleep(0.2)
    finally:
        r.close()
    assert peak >= DEFAULT_IN_FLIGHT - 16, f"only {peak} jobs were ever in flight at once"
    statuses: dict[str, int] = {}
    with stack.client() as c:
        for job_id in ids:
            job = c.get(f"/v1/jobs/{job_id}").json()
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
    assert statuses == {"succeeded": BURST}, f"{statuses}\n{stack.log_tail()}"
    assert stack.metric('omnibatch_jobs_finished_total{status="succeeded"}') == BURST
    assert stack.metric("omnibatch_jobs_started_total") == BURST
