"""A job's life through the worker-facing jobstore API, as the REST API shows it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from rq import Queue

from contract import jobstore
from contract.retention import RETENTION_KEY
from contract.schemas import (
    JobError,
    JobErrorCode,
    JobStatus,
    ModelInfo,
    Output,
    Segment,
    Usage,
    cancel_key,
    worker_heartbeat_key,
)
from tests.service.conftest import png_bytes
from tests.service.test_submit import assert_problem, form
from workers.leases import Lease, LeaseTable

pytestmark = pytest.mark.anyio
MODEL = ModelInfo(name="demo-random", revision="0", precision="fp32")


async def submit(api, request: dict | None = None) -> str:
    resp = await api.post("/v1/jobs", files=form(png_bytes(), request or {}))
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def take(r, job_id: str, worker: str = "w1") -> Lease | None:
    """What a worker does: claim the job off its queue (this one: put first in the queue).
    None when it is not there to claim: cancelled, expired or taken before."""
    queue = Queue("jobs:normal", connection=r)
    if not r.lrem(queue.key, 1, job_id):
        return None
    r.lpush(queue.key, job_id)
    lease = LeaseTable(r, worker, ttl_s=30, attempts_ttl_s=60).claim([queue], f"{worker}:{job_id}")
    return lease if lease is not None and lease.job_id == job_id else None


async def test_run_to_success_and_fetch_result(api, redis_client):
    job_id = await submit(api, {"metadata": {"batch": "7"}})
    assert_problem(await api.get(f"/v1/jobs/{job_id}/result"), 409, "conflict")
    lease = take(redis_client, job_id, "w1")
    assert lease is not None
    assert not take(redis_client, job_id, "w2")  # only once
    jobstore.set_progress(redis_client, job_id, lease.token, "generating", 3, 10)
    running = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert running["status"] == "running" and running["queue_position"] is None
    assert running["progress"] == {"stage": "generating", "done": 3, "total": 10}
    assert running["started_at"] is not None

    usage = Usage(input_tokens=120, output_tokens=9, images=1, gpu_seconds=0.5)
    output = Output(text="a red square", segments=[Segment(page=1, text="a red square")])
    storage = api.app_state.storage
    assert jobstore.finish(
        redis_client, storage, job_id, JobStatus.succeeded, output=output, usage=usage, model=MODEL
    )
    assert not jobstore.finish(redis_client, storage, job_id, JobStatus.failed)  # exactly once
    job = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded" and job["usage"]["output_tokens"] == 9
    result = (await api.get(f"/v1/jobs/{job_id}/result")).json()
    assert result["output"]["text"] == "a red square" and result["model"]["name"] == "demo-random"
    assert result["metadata"] == {"batch": "7"} and result["usage"]["input_tokens"] == 120

    text = (await api.get("/metrics")).text
    assert 'omnibatch_jobs_finished_total{status="succeeded"} 1' in text
    assert 'omnibatch_tokens_total{kind="output"} 9' in text
    assert 'omnibatch_queue_depth{queue="jobs:normal"} 0' in text


async def test_failed_job_shows_its_error(api, redis_client):
    job_id = await submit(api)
    take(redis_client, job_id, "w1")
    err = JobError(code=JobErrorCode.media_unreadable, message="truncated file")
    jobstore.finish(redis_client, api.app_state.storage, job_id, JobStatus.failed, error=err)
    job = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert job["error"] == {"code": "media_unreadable", "message": "truncated file"}
    assert_problem(await api.get(f"/v1/jobs/{job_id}/result"), 409, "conflict")


async def test_cancel_queued_running_and_finished(api, redis_client):
    storage = api.app_state.storage
    queued, running = await submit(api), await submit(api)
    take(redis_client, running, "w1")

    resp = await api.post(f"/v1/jobs/{queued}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    assert queued not in Queue("jobs:normal", connection=redis_client).job_ids
    assert not take(redis_client, queued, "w2")  # a worker that popped it skips

    resp = await api.post(f"/v1/jobs/{running}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "running"
    assert redis_client.exists(cancel_key(running))
    partial = Output(text="first half", segments=[Segment(start_s=0, end_s=30, text="first half")])
    jobstore.finish(
        redis_client, storage, running, JobStatus.cancelled, output=partial, model=MODEL
    )
    assert not redis_client.exists(cancel_key(running))
    result = (await api.get(f"/v1/jobs/{running}/result")).json()
    assert result["status"] == "cancelled" and result["output"]["segments"][0]["end_s"] == 30

    again = await api.post(f"/v1/jobs/{running}/cancel")  # finished: a no-op
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


async def test_cancel_racing_a_worker_asks_the_worker_to_stop(api, redis_client):
    job_id = await submit(api)
    seen = jobstore.load(redis_client, job_id)  # what the gateway read: still queued
    take(redis_client, job_id, "w1")
    rec = jobstore.cancel(redis_client, api.app_state.storage, seen)
    assert rec.status is JobStatus.running and rec.worker == "w1"
    assert redis_client.exists(cancel_key(job_id))
    assert api.app_state.storage.input_path(job_id).exists()  # the worker is reading it


async def test_delete_removes_record_input_and_result(api, redis_client):
    storage = api.app_state.storage
    job_id, queued = await submit(api), await submit(api)
    take(redis_client, job_id, "w1")
    jobstore.finish(
        redis_client, storage, job_id, JobStatus.succeeded, output=Output(text="x"), model=MODEL
    )
    assert not storage.input_path(job_id).exists()  # the input goes when the job ends
    assert storage.results_of(job_id) and storage.input_path(queued).exists()
    assert (await api.delete(f"/v1/jobs/{job_id}")).status_code == 204
    assert not storage.results_of(job_id)
    assert (await api.delete(f"/v1/jobs/{queued}")).status_code == 204
    assert not storage.input_path(queued).exists()
    assert queued not in Queue("jobs:normal", connection=redis_client).job_ids
    assert_problem(await api.get(f"/v1/jobs/{job_id}"), 404, "not_found")
    assert (await api.get("/v1/jobs")).json()["data"] == []
    assert redis_client.zcard(RETENTION_KEY) == 0


async def test_the_result_is_whole_on_disk_before_the_record_names_it(api, redis_client):
    """A worker that dies right after its finish committed leaves a job with its result;
    a second attempt that loses the race leaves no file behind; a retry writes the same."""
    storage = api.app_state.storage
    job_id = await submit(api)
    lease = take(redis_client, job_id, "w1")
    out = Output(text="first")
    finish = jobstore.finish
    assert finish(redis_client, storage, job_id, JobStatus.succeeded, attempt=lease.token,
                  output=out, model=MODEL)  # fmt: skip
    rec = jobstore.load(redis_client, job_id)
    assert storage.results_of(job_id) == [storage.root / rec.result]
    assert storage.read_result(rec.result).output.text == "first"
    # the same attempt again (its reply lost): "done", and still one file, the same one
    assert finish(redis_client, storage, job_id, JobStatus.succeeded, attempt=lease.token,
                  output=out, model=MODEL)  # fmt: skip
    assert storage.results_of(job_id) == [storage.root / rec.result]
    # another attempt (its lease swept meanwhile) loses and leaves nothing
    assert not finish(redis_client, storage, job_id, JobStatus.succeeded, attempt="other",
                      output=Output(text="second"), model=MODEL)  # fmt: skip
    assert storage.results_of(job_id) == [storage.root / rec.result]
    assert (await api.get(f"/v1/jobs/{job_id}/result")).json()["output"]["text"] == "first"


async def test_list_newest_first_with_cursor_and_status(api, redis_client):
    ids = [await submit(api) for _ in range(5)]
    take(redis_client, ids[1], "w1")
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/jobs", params=params)).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    running = (await api.get("/v1/jobs", params={"status": "running"})).json()
    assert [j["id"] for j in running["data"]] == [ids[1]] and running["next_cursor"] is None
    assert_problem(await api.get("/v1/jobs", params={"cursor": "x"}), 422, "invalid_request")
    assert_problem(await api.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")


async def test_wait_long_polls_until_terminal(api, redis_client):
    job_id = await submit(api)
    storage = api.app_state.storage

    def worker():
        time.sleep(0.4)
        take(redis_client, job_id, "w1")
        jobstore.finish(redis_client, storage, job_id, JobStatus.succeeded, output=Output(text="y"))

    thread = threading.Thread(target=worker)
    start = time.monotonic()
    thread.start()
    job = (await api.get(f"/v1/jobs/{job_id}", params={"wait": 10})).json()
    thread.join()
    assert job["status"] == "succeeded" and 0.3 < time.monotonic() - start < 5
    start = time.monotonic()
    other = await submit(api)
    job = (await api.get(f"/v1/jobs/{other}", params={"wait": 0.3})).json()
    assert job["status"] == "queued" and time.monotonic() - start < 3


async def test_health_and_readiness(api, redis_client):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert_problem(await api.get("/readyz"), 503, "not_ready")
    key = worker_heartbeat_key("gpu0")
    redis_client.hset(key, mapping={"model_loaded": "0"})
    redis_client.expire(key, 30)
    assert (await api.get("/readyz")).status_code == 503
    redis_client.hset(key, "model_loaded", "1")
    assert (await api.get("/readyz")).json() == {"status": "ready", "workers": 1}


async def test_redis_down_is_not_ready_and_answers_problems(settings, make_redis_server):
    from tests.service.conftest import serve_app

    server = make_redis_server()
    async with serve_app(settings(redis_url=server.url)) as api:
        server.stop()
        assert_problem(await api.get("/readyz"), 503, "not_ready")
        resp = await api.get("/v1/jobs")
        body = assert_problem(resp, 503, "service_unavailable")
        assert "Traceback" not in resp.text and "/" not in body["detail"]
        assert resp.headers["retry-after"] == "5"
        await asyncio.sleep(0)


async def test_openapi_shows_the_real_schemas(api):
    schema = (await api.get("/openapi.json")).json()
    post = schema["paths"]["/v1/jobs"]["post"]
    content = post["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"] == "#/components/schemas/JobCreateUrl"
    assert "multipart/form-data" in content
    components = schema["components"]["schemas"]
    assert components["JobCreateUrl"]["additionalProperties"] is False
    assert components["JobCreateUpload"]["additionalProperties"] is False
    assert "VideoOptions" in components and "JobPublic" in components
    assert components["VideoOptions"]["properties"]["fps"]["exclusiveMinimum"] == 0
