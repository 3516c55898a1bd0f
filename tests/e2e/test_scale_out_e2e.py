"""Two workers on one Redis (issue #17, CPU): they split a batch, each job runs once and ends
once (records, counters, one webhook each), and SIGKILLing one of them mid-batch loses
nothing: the other finishes what it held."""

from __future__ import annotations

import json
import signal
import socket
import time

import redis

from contract import jobstore
from contract.schemas import worker_heartbeat_key
from tests.e2e.conftest import WEBHOOK_SECRET

SMALL = {"generation": {"max_tokens": 2}}
LONGER = {"generation": {"max_tokens": 48}}


def _start_two(stack) -> dict[str, int]:
    """Both load at once; name → pid once both heartbeats say the model is loaded."""
    procs = {name: stack.spawn(name, "worker", "--device", "cpu") for name in ("a", "b")}
    r = redis.Redis.from_url(stack.redis.url)
    keys = [worker_heartbeat_key(f"{socket.gethostname()}:cpu:{p.pid}") for p in procs.values()]
    try:
        stack._wait(lambda: all(r.hget(k, "model_loaded") == b"1" for k in keys), "workers", 120)
    finally:
        r.close()
    return {name: p.pid for name, p in procs.items()}


def test_two_workers_split_a_batch_and_survive_losing_one(stack, media, receiver):
    stack.spawn("webhooks", "webhooks")
    pids = _start_two(stack)
    hook = {"webhook": {"url": receiver.url, "secret": WEBHOOK_SECRET}}
    r = jobstore.connect(stack.redis.url)
    try:
        first = [stack.submit(media["image"], **SMALL, **hook) for _ in range(12)]
        assert {stack.finished(j)["status"] for j in first} == {"succeeded"}
        ran_on = {jobstore.load(r, j).worker.rsplit(":", 1)[1] for j in first}
        assert ran_on == {str(pid) for pid in pids.values()}, "both workers took jobs"
        assert stack.metric("omnibatch_job_attempts_total") == len(first), "each ran once"

        second = [stack.submit(media["image"], **LONGER, **hook) for _ in range(8)]
        victim = f":{pids['a']}"

        def a_is_running_some() -> bool:
            recs = [jobstore.load(r, j) for j in second]
            return any(x.status.value == "running" and x.worker.endswith(victim) for x in recs)

        stack._wait(a_is_running_some, "worker a running a job", 60)
        assert stack.stop("a", signal.SIGKILL) == -signal.SIGKILL
        assert {stack.finished(j, timeout=120)["status"] for j in second} == {"succeeded"}
    finally:
        r.close()
    every = first + second
    assert stack.metric('omnibatch_jobs_finished_total{status="succeeded"}') == len(every)
    assert stack.metric("omnibatch_jobs_started_total") == len(every)
    assert stack.metric("omnibatch_job_attempts_total") > len(every), "a's jobs ran again"
    for job_id in every:
        stack.wait_for(job_id, lambda j: (j.get("webhook") or {}).get("state") == "delivered")
    time.sleep(1.0)  # room for a duplicate to show up
    events = [json.loads(body)["data"]["job_id"] for _, body in receiver.events]
    assert sorted(events) == sorted(every), "one webhook per job: each ended exactly once"
