"""A batch's life, driven by the gateway's batch runner against real Redis, with the test in
the worker's place (it takes queued jobs and finishes them through the jobstore API): the
plan, the feeding window, the counts, the output and error files, cancel, expiry, restarts."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from openai.types.chat import ChatCompletion
from rq import Queue

from contract import jobstore
from contract.schemas import (
    QUEUE_LOW,
    JobError,
    JobErrorCode,
    JobStatus,
    ModelInfo,
    Output,
    Usage,
    cancel_key,
)
from service.batches import store
from service.joblist import queue_key
from tests.service.conftest import png_bytes, serve_app, wav_bytes
from tests.service.test_batch_api import chat_line, create_batch, jsonl, upload
from workers.leases import Lease, LeaseTable

pytestmark = pytest.mark.anyio
MODEL = ModelInfo(name="demo-random")
FAST = {"batch_feed_interval_s": 0.05}


async def until(api, batch_id: str, check, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        batch = (await api.get(f"/v1/batches/{batch_id}")).json()
        if check(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        await asyncio.sleep(0.05)


def queued(r) -> list[str]:
    return [j.decode() for j in r.lrange(queue_key(QUEUE_LOW), 0, -1)]


def take(r, job_id: str) -> Lease:
    """What a worker does: claim the job off the low queue (put first in it); the lease."""
    queue = Queue(QUEUE_LOW, connection=r)
    assert r.lrem(queue.key, 1, job_id)
    r.lpush(queue.key, job_id)
    lease = LeaseTable(r, "test-worker", ttl_s=30, attempts_ttl_s=60).claim([queue], job_id)
    assert lease is not None and lease.job_id == job_id
    return lease


def succeed(r, storage, job_id: str, text: str = "red", lease: Lease | None = None) -> None:
    lease = lease or take(r, job_id)
    usage = Usage(input_tokens=10, output_tokens=2, images=1)
    assert jobstore.finish(
        r, storage, job_id, JobStatus.succeeded, attempt=lease.token,
        output=Output(text=text), usage=usage, model=MODEL,
    )  # fmt: skip


def fail(r, storage, job_id: str) -> None:
    lease = take(r, job_id)
    error = JobError(code=JobErrorCode.media_unreadable, message="no frame decodes")
    assert jobstore.finish(r, storage, job_id, JobStatus.failed, attempt=lease.token, error=error)


async def lines_of(api, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    text = (await api.get(f"/v1/files/{file_id}/content")).text
    return [json.loads(ln) for ln in text.splitlines()]


async def test_a_batch_runs_to_completed_with_output_and_error_files(
    settings, redis_client, receiver
):
    receiver.replies = [(200, {}, png_bytes())]
    cfg = settings(allow_private_urls=["127.0.0.1/32"], **FAST)
    async with serve_app(cfg) as api:
        r, storage = redis_client, api.app_state.storage
        media = await upload(api, wav_bytes(), "user_data", "a.wav")
        audio = base64.b64encode(wav_bytes()).decode()
        lines = [
            chat_line("img", response_format={"type": "json_object"}),
            chat_line("aud", {"type": "input_audio", "input_audio": {"data": audio, "format": ""}}),
            chat_line("fid", {"type": "file", "file": {"file_id": media["id"]}}),
            chat_line("url", {"type": "image_url", "image_url": {"url": receiver.url + "/a.png"}}),
            chat_line("bad-url", {"type": "image_url", "image_url": {"url": "http://10.1.2.3/x"}}),
            chat_line("broken", {"type": "image_url", "image_url": {"url": "data:x;base64,AAAA"}}),
            chat_line("fails"),
            chat_line("img"),  # duplicate custom_id
            "{not json",
            "",
            chat_line("two", *chat_line("x")["body"]["messages"][0]["content"] * 2),
        ]
        file_id = (await upload(api, jsonl(lines)))["id"]
        batch = await create_batch(api, file_id)
        batch = await until(api, batch["id"], lambda b: len(queued(r)) == 5)
        assert batch["status"] == "in_progress" and batch["in_progress_at"] is not None
        assert batch["model"] == "nemotron-omni"
        # 10 requests (the blank line is none); 4 invalid ones; bad-url fails to download
        assert batch["request_counts"] == {"total": 10, "completed": 0, "failed": 5}
        jobs = {jobstore.load(r, j).request.metadata["custom_id"]: j for j in queued(r)}
        assert set(jobs) == {"img", "aud", "fid", "url", "fails"}
        recs = {cid: jobstore.load(r, j) for cid, j in jobs.items()}
        assert all(rec.priority.value == "low" for rec in recs.values())
        assert recs["fid"].input == f"files/{media['id']}/content"
        assert recs["aud"].media_type == "audio" and recs["url"].media_type == "image"
        assert storage.input_path(jobs["url"]).read_bytes() == png_bytes()
        assert recs["img"].request.prompt == "what colour?"
        assert recs["img"].request.response_format.type == "json_object"
        assert recs["aud"].request.response_format.type == "text"

        for cid, job_id in jobs.items():
            (fail if cid == "fails" else succeed)(r, storage, job_id, **(
                {"text": f"answer {cid}"} if cid != "fails" else {}
            ))  # fmt: skip
        batch = await until(api, batch["id"], lambda b: b["status"] == "completed")
        assert batch["request_counts"] == {"total": 10, "completed": 4, "failed": 6}
        assert batch["usage"]["input_tokens"] == 40 and batch["usage"]["output_tokens"] == 8
        assert batch["usage"]["total_tokens"] == 48
        assert batch["finalizing_at"] is not None and batch["completed_at"] is not None

        out = await lines_of(api, batch["output_file_id"])
        assert sorted(ln["custom_id"] for ln in out) == ["aud", "fid", "img", "url"]
        for ln in out:
            assert ln["error"] is None and ln["response"]["status_code"] == 200
            body = ChatCompletion.model_validate(ln["response"]["body"])
            assert body.choices[0].message.content == f"answer {ln['custom_id']}"
            assert body.choices[0].finish_reason == "stop" and body.usage.total_tokens == 12
            assert ln["response"]["request_id"] == jobs[ln["custom_id"]]
        errors = {ln["custom_id"]: ln for ln in await lines_of(api, batch["error_file_id"])}
        assert set(errors) == {"img", None, "two", "broken", "bad-url", "fails"}
        assert errors["img"]["error"]["code"] == "duplicate_custom_id"
        assert "line 8" in errors["img"]["error"]["message"]
        assert errors[None]["error"]["code"] == "invalid_json_line"
        assert errors["two"]["error"]["code"] == "invalid_request"
        assert errors["broken"]["error"]["code"] == "invalid_media"
        assert errors["bad-url"]["error"]["code"] == "url_forbidden"
        failed = errors["fails"]["response"]
        assert failed["status_code"] == 400
        assert failed["body"]["error"]["code"] == "media_unreadable"
        files = {f["id"]: f for f in (await api.get("/v1/files")).json()["data"]}
        assert files[batch["output_file_id"]]["purpose"] == "batch_output"
        assert not (storage.root / "batches" / batch["id"]).exists()
        assert not r.sismember(store.ACTIVE_KEY, batch["id"])


async def test_the_feeder_keeps_a_window_queued_and_survives_a_restart(settings, redis_client):
    cfg = settings(batch_max_queued=3, **FAST)
    async with serve_app(cfg) as api:
        r, storage = redis_client, api.app_state.storage
        file_id = (await upload(api, jsonl([chat_line(f"c{i}") for i in range(8)])))["id"]
        batch = await create_batch(api, file_id)
        await until(api, batch["id"], lambda b: len(queued(r)) == 3)
        first = queued(r)
        lease = take(r, first[0])  # running jobs leave the window
        await until(api, batch["id"], lambda b: len(queued(r)) == 3)
        await asyncio.sleep(0.3)
        assert len(queued(r)) == 3, "never more than the window"
    # the gateway is gone; its successor carries on from Redis and DATA_DIR
    async with serve_app(cfg) as api:
        storage = api.app_state.storage
        succeed(r, storage, first[0], lease=lease)
        done = {first[0]}
        while len(done) < 8:
            await until(api, batch["id"], lambda b: queued(r))
            for job_id in queued(r):
                succeed(r, storage, job_id)
                done.add(job_id)
        batch = await until(api, batch["id"], lambda b: b["status"] == "completed")
        assert batch["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
        out = await lines_of(api, batch["output_file_id"])
        assert sorted(ln["custom_id"] for ln in out) == sorted(f"c{i}" for i in range(8))
        assert batch["error_file_id"] is None


async def test_cancel_stops_queued_and_running_jobs_and_keeps_what_finished(
    settings, redis_client
):
    async with serve_app(settings(batch_max_queued=3, **FAST)) as api:
        r, storage = redis_client, api.app_state.storage
        file_id = (await upload(api, jsonl([chat_line(f"c{i}") for i in range(6)])))["id"]
        batch = await create_batch(api, file_id)
        await until(api, batch["id"], lambda b: len(queued(r)) == 3)
        done, running, waiting = queued(r)
        succeed(r, storage, done)
        lease = take(r, running)
        resp = await api.post(f"/v1/batches/{batch['id']}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
        assert resp.json()["cancelling_at"] is not None
        await until(
            api, batch["id"],
            lambda b: r.exists(cancel_key(running))
            and jobstore.load(r, waiting).status is JobStatus.cancelled,
        )  # fmt: skip
        assert jobstore.load(r, running).status is JobStatus.running
        assert (await api.get(f"/v1/batches/{batch['id']}")).json()["status"] == "cancelling"
        # the worker stops the running job at a safe point
        stopped = JobError(code=JobErrorCode.cancelled, message="cancelled while running")
        jobstore.finish(
            r, storage, running, JobStatus.cancelled, attempt=lease.token, error=stopped
        )
        batch = await until(api, batch["id"], lambda b: b["status"] == "cancelled")
        assert batch["cancelled_at"] is not None and queued(r) == []
        jobs = [j for j in (await api.get("/v1/jobs")).json()["data"]
                if j["metadata"]["batch_id"] == batch["id"]]  # fmt: skip
        # the feeder may have topped the window up before the cancel: those jobs count too
        cancelled = sum(j["status"] == "cancelled" for j in jobs)
        assert cancelled >= 2 and len(jobs) == cancelled + 1
        assert batch["request_counts"] == {"total": 6, "completed": 1, "failed": cancelled}
        out = await lines_of(api, batch["output_file_id"])
        assert [ln["custom_id"] for ln in out] == ["c0"]
        errors = await lines_of(api, batch["error_file_id"])
        assert [ln["custom_id"] for ln in errors] == [f"c{i}" for i in range(1, 6)]
        assert {ln["error"]["code"] for ln in errors} == {"batch_cancelled"}
        again = await api.post(f"/v1/batches/{batch['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_a_finished_batch_cannot_be_cancelled(settings, redis_client):
    async with serve_app(settings(**FAST)) as api:
        file_id = (await upload(api, jsonl([chat_line("only")])))["id"]
        batch = await create_batch(api, file_id)
        await until(api, batch["id"], lambda b: queued(redis_client))
        succeed(redis_client, api.app_state.storage, queued(redis_client)[0])
        await until(api, batch["id"], lambda b: b["status"] == "completed")
        resp = await api.post(f"/v1/batches/{batch['id']}/cancel")
        assert resp.status_code == 409 and resp.json()["code"] == "conflict"


async def test_the_window_passing_expires_the_batch(settings, redis_client):
    async with serve_app(settings(batch_max_queued=2, **FAST)) as api:
        r, storage = redis_client, api.app_state.storage
        file_id = (await upload(api, jsonl([chat_line(f"c{i}") for i in range(5)])))["id"]
        batch = await create_batch(api, file_id)
        await until(api, batch["id"], lambda b: len(queued(r)) == 2)
        succeed(r, storage, queued(r)[0])
        store.set_fields(r, batch["id"], expires_at=int(time.time()) - 1)  # 24 h later
        batch = await until(api, batch["id"], lambda b: b["status"] == "expired")
        assert batch["expired_at"] is not None and queued(r) == []
        assert batch["request_counts"]["completed"] == 1
        assert len(await lines_of(api, batch["output_file_id"])) == 1
        errors = await lines_of(api, batch["error_file_id"])
        assert len(errors) == 4 and {ln["error"]["code"] for ln in errors} == {"batch_expired"}


THREE = [json.dumps(chat_line(f"c{i}")) for i in range(3)]
TOO_LONG = json.dumps(chat_line("big")) + " " * (1 << 20)


@pytest.mark.parametrize(
    ("overrides", "lines", "code"),
    [
        ({}, ["{bad", json.dumps({"custom_id": "x"})], "invalid_json_line"),
        ({"batch_max_lines": 2}, THREE, "too_many_lines"),
        ({"batch_max_line_mb": 1}, [TOO_LONG], "line_too_large"),
    ],
)
async def test_a_file_with_nothing_to_run_fails_validation(
    settings, redis_client, overrides, lines, code
):
    async with serve_app(settings(**FAST | overrides)) as api:
        file_id = (await upload(api, jsonl(lines)))["id"]
        batch = await create_batch(api, file_id)
        batch = await until(api, batch["id"], lambda b: b["status"] == "failed")
        assert batch["failed_at"] is not None and batch["errors"]["object"] == "list"
        assert batch["errors"]["data"][0]["code"] == code
        assert batch["output_file_id"] is None and batch["error_file_id"] is None
        assert queued(redis_client) == []
