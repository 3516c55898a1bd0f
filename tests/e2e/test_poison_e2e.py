"""A poisoned job fails alone; a worker whose engine died does not wedge its jobs.

The API refuses a seed outside [0, 2**63) (422); a job stored by a gateway that checked less
(an older version) reaches the worker anyway: it fails alone with `invalid_request` while
the job beside it succeeds. Then the worker's engine thread is made to die (a release
callback that raises, handed to the engine inside the worker process): the worker turns
unready at once, hands its jobs back and exits 1 for its supervisor to replace it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import redis

from contract.schemas import job_key
from tests.e2e.conftest import ROOT
from tests.e2e.test_recovery_e2e import SLOW, _generating

# A real worker process, plus a thread that kills its engine once `trigger` exists.
WORKER_WITH_A_FUSE = """
import os, sys, threading, time
from pathlib import Path
import logging
from contract.settings import WorkerSettings
from workers.engine.engine import Prepared
from workers.engine.request import SamplingParams
from workers.worker import Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
worker = Worker(WorkerSettings())

def fuse(trigger=Path(sys.argv[1])):
    while not trigger.exists():
        time.sleep(0.05)
    def boom():
        raise RuntimeError("a bug in the engine loop")
    poison = Prepared("x", [], SamplingParams(max_tokens=1), 0.0, on_host_release=boom)
    worker.pipeline.engine.submit(poison)

threading.Thread(target=fuse, daemon=True).start()
os._exit(worker.serve())
"""


def test_poisoned_jobs_fail_alone_and_a_dead_engine_hands_jobs_back(stack, media, tmp_path):
    with stack.client() as c:
        resp = c.post(
            "/v1/jobs", files={"file": ("p.png", media["image"].read_bytes())},
            data={"request": json.dumps({"generation": {"seed": 2**64}})},
        )  # fmt: skip
    assert resp.status_code == 422 and resp.json()["code"] == "invalid_request"

    poisoned = stack.submit(media["image"], generation={"max_tokens": 2, "temperature": 1.0})
    innocent = stack.submit(media["image"], generation={"max_tokens": 2, "seed": 5})
    r = redis.Redis.from_url(stack.redis.url)
    request = json.loads(r.hget(job_key(poisoned), "request"))
    request["generation"]["seed"] = 2**64  # as an older gateway stored it
    r.hset(job_key(poisoned), "request", json.dumps(request))

    trigger = tmp_path / "kill-the-engine"
    log = open(stack.logs / "fused-worker.log", "ab")  # noqa: SIM115 - the child owns it
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_WITH_A_FUSE, str(trigger)],
        cwd=ROOT, env=stack.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        failed = stack.finished(poisoned, timeout=120)
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "invalid_request"
        assert "seed" in failed["error"]["message"]
        assert stack.finished(innocent)["status"] == "succeeded", "the job beside it"

        slow = stack.submit(media["medium_video"], **SLOW)
        stack.wait_for(slow, _generating)
        trigger.touch()
        deadline = time.monotonic() + 5
        while httpx.get(f"{stack.base}/readyz").status_code != 503:
            assert time.monotonic() < deadline, "still ready with a dead engine"
            time.sleep(0.1)
        assert worker.wait(30) == 1, "a worker whose engine died exits 1"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        r.close()
    job = stack.job(slow)
    assert job["status"] == "queued" and job["started_at"] is None, "handed back, not failed"
    assert "the engine thread died" in (stack.logs / "fused-worker.log").read_text()
