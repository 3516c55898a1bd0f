"""The gateway's own sweeps, with tiny ages: queued jobs expire with no worker running, and
finished jobs disappear (record, index entry, result) when their retention ends."""

from __future__ import annotations

import asyncio
import time

import pytest
from rq import Queue

from contract import jobstore
from contract.events import event_key
from contract.retention import RETENTION_KEY
from contract.schemas import (
    WEBHOOK_QUEUE,
    JobStatus,
    Output,
    WebhookEvent,
    WebhookState,
    job_key,
    owner_index_key,
)
from service import expiry
from tests.service.conftest import serve_app
from tests.service.test_lifecycle import submit, take
from tests.service.test_submit import assert_problem

pytestmark = pytest.mark.anyio


async def test_queued_jobs_expire_without_a_worker(settings, redis_client, receiver):
    s = settings(
        max_queue_age_s=1.5, housekeeping_interval_s=0.1, allow_private_urls=["127.0.0.1/32"]
    )
    async with serve_app(s) as api:
        stale = await submit(api, {"webhook": {"url": f"{receiver.url}/hook"}})
        running = await submit(api)
        assert take(redis_client, running, "w1")
        job = (await api.get(f"/v1/jobs/{stale}", params={"wait": 10})).json()
        assert job["status"] == "expired" and job["error"]["code"] == "timeout"
        assert job["finished_at"] is not None and job["queue_position"] is None
        assert (await api.get(f"/v1/jobs/{running}")).json()["status"] == "running"
        assert stale not in Queue("jobs:normal", connection=redis_client).job_ids
        assert not take(redis_client, stale, "w2")  # a late worker skips it
        assert not api.app_state.storage.input_path(stale).exists()
        assert_problem(await api.get(f"/v1/jobs/{stale}/result"), 409, "conflict")
        metrics = (await api.get("/metrics")).text
        assert 'omnibatch_jobs_finished_total{status="expired"} 1' in metrics
    (delivery,) = Queue(WEBHOOK_QUEUE, connection=redis_client).jobs
    event = WebhookEvent.model_validate_json(redis_client.hget(event_key(delivery.args[0]), "body"))
    assert event.type == "job.expired" and event.data.job_id == stale


async def test_expiry_counts_from_the_submit(api, redis_client):
    job_id = await submit(api)
    storage = api.app_state.storage
    assert expiry.sweep(redis_client, storage, 60) == []
    assert (await api.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"
    assert expiry.sweep(redis_client, storage, 60, now=time.time() + 61) == [job_id]
    assert (await api.get(f"/v1/jobs/{job_id}")).json()["status"] == "expired"


async def test_finished_jobs_go_when_their_retention_ends(settings, redis_client):
    async with serve_app(settings(job_record_ttl_s=1, housekeeping_interval_s=0.1)) as api:
        storage = api.app_state.storage
        done, waiting = await submit(api), await submit(api)
        take(redis_client, done, "w1")
        assert jobstore.finish(
            redis_client, storage, done, JobStatus.succeeded, output=Output(text="x")
        )
        assert not storage.input_path(done).exists() and storage.results_of(done)
        assert 0 < redis_client.pttl(job_key(done)) <= 1000
        assert redis_client.ttl(job_key(waiting)) == -1  # only finished jobs expire
        deadline = time.monotonic() + 10
        while storage.results_of(done):
            assert time.monotonic() < deadline, "the result outlived its retention"
            await asyncio.sleep(0.05)
        assert_problem(await api.get(f"/v1/jobs/{done}"), 404, "not_found")
        assert [j["id"] for j in (await api.get("/v1/jobs")).json()["data"]] == [waiting]
        assert redis_client.zrange(owner_index_key("alpha"), 0, -1) == [waiting.encode()]
        assert redis_client.zcard(RETENTION_KEY) == 0
        assert storage.input_path(waiting).exists()
    jobstore.update_webhook_state(redis_client, done, WebhookState(attempts=2))
    assert not redis_client.exists(job_key(done))  # a late delivery does not bring it back
