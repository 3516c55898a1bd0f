"""Submitting jobs: multipart uploads and URLs, and every bad input answered as problem+json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job

from contract import jobstore
from contract.schemas import JOB_FUNCTION
from service import ratelimit
from tests.service.conftest import AUTH_B, png_bytes, serve_app, wav_bytes

pytestmark = pytest.mark.anyio


def form(data: bytes, request: dict | str | None = None, name: str = "clip.bin"):
    files = {"file": (name, data, "application/octet-stream")}
    if request is not None:
        text = request if isinstance(request, str) else json.dumps(request)
        files["request"] = (None, text, "application/json")
    return files


def assert_problem(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code and body["status"] == status
    assert set(body) == {"type", "title", "status", "detail", "code"}
    return body


async def test_upload_is_stored_recorded_and_enqueued(api, redis_client):
    request = {"task": "ask", "prompt": "what colour?", "priority": "high", "metadata": {"k": "v"}}
    resp = await api.post("/v1/jobs", files=form(png_bytes(), request))
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] == "queued" and job["id"].startswith("job_")
    assert resp.headers["location"] == job["links"]["self"]

    stored = api.app_state.storage.input_path(job["id"])
    assert stored.read_bytes() == png_bytes()
    queue = Queue("jobs:high", connection=redis_client)
    assert queue.job_ids == [job["id"]]
    assert Job.fetch(job["id"], connection=redis_client).func_name == JOB_FUNCTION

    got = (await api.get(f"/v1/jobs/{job['id']}")).json()
    assert got["media_type"] == "image" and got["task"] == "ask"
    assert got["metadata"] == {"k": "v"} and got["queue_position"] == 0
    assert got["progress"]["stage"] == "queued"


async def test_queue_position_counts_higher_priorities_first(api):
    ids = []
    for priority in ("low", "normal", "high", "normal"):
        resp = await api.post("/v1/jobs", files=form(wav_bytes(), {"priority": priority}))
        ids.append(resp.json()["id"])
    positions = [(await api.get(f"/v1/jobs/{i}")).json()["queue_position"] for i in ids]
    assert positions == [3, 1, 0, 2]


async def test_other_keys_jobs_are_not_found(api):
    job = (await api.post("/v1/jobs", files=form(png_bytes()))).json()
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/result"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("DELETE", f"/v1/jobs/{job['id']}"),
    ]:
        assert_problem(await api.request(method, path, headers=AUTH_B), 404, "not_found")
    missing = job["id"][:-4] + "ffff"
    assert_problem(await api.get(f"/v1/jobs/{missing}"), 404, "not_found")
    assert (await api.get("/v1/jobs", headers=AUTH_B)).json()["data"] == []
    assert (await api.get(f"/v1/jobs/{job['id']}")).status_code == 200


async def test_missing_or_wrong_key_is_unauthorized(api):
    resp = await api.get("/v1/jobs", headers={"Authorization": ""})
    assert_problem(resp, 401, "unauthorized")
    resp = await api.get("/v1/jobs", headers={"Authorization": "Bearer not-a-key-of-ours-at-all"})
    assert_problem(resp, 401, "unauthorized")


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ({"request": (None, "{}", "application/json")}, 422, "invalid_request"),  # no file
        (form(b""), 422, "invalid_request"),  # empty file
        (form(os.urandom(4096)), 415, "unsupported_media_type"),  # random bytes
        (form(png_bytes(), "{not json"), 422, "invalid_request"),  # malformed JSON
        (form(png_bytes(), {"task": "caption", "colour": "red"}), 422, "invalid_request"),
        (form(png_bytes(), {"video": {"fps": 9}}), 422, "invalid_request"),  # out of bounds
        (form(png_bytes(), {"task": "ask"}), 422, "invalid_request"),  # ask without prompt
        (form(png_bytes(), {"input": {"url": "http://x.org/a"}}), 422, "invalid_request"),
        (form(png_bytes(), {"generation": {"seed": False}}), 422, "invalid_request"),
        (form(png_bytes(), {"generation": {"max_tokens": "5"}}), 422, "invalid_request"),
        (form(png_bytes(), {"video": {"use_audio": 0}}), 422, "invalid_request"),
    ],
    ids=["no-file", "empty", "random", "bad-json", "unknown-field", "bounds", "ask", "url+file",
         "bool-for-int", "text-for-int", "int-for-bool"],  # fmt: skip
)
async def test_bad_uploads(api, files, status, code):
    assert_problem(await api.post("/v1/jobs", files=files), status, code)
    assert not any((api.app_state.storage.root / "inputs").glob("*/*"))
    assert (await api.get("/healthz")).status_code == 200


async def test_integers_may_be_written_as_integral_numbers(api, redis_client):
    """JSON Schema's `integer` includes 8.0, which strict parsing would refuse."""
    request = {"generation": {"max_tokens": 8.0, "seed": 3.0}, "video": {"max_frames": 16.0}}
    resp = await api.post("/v1/jobs", files=form(png_bytes(), request))
    assert resp.status_code == 202, resp.text
    rec = jobstore.load(redis_client, resp.json()["id"])
    assert (rec.request.generation.max_tokens, rec.request.generation.seed) == (8, 3)
    assert rec.request.video.max_frames == 16


async def test_wrong_content_type_and_bad_json_body(api):
    resp = await api.post("/v1/jobs", content=png_bytes(), headers={"content-type": "image/png"})
    assert_problem(resp, 415, "unsupported_media_type")
    resp = await api.post(
        "/v1/jobs", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert_problem(resp, 422, "invalid_request")
    assert_problem(await api.post("/v1/jobs", json={"task": "caption"}), 422, "invalid_request")


async def test_declared_oversize_body_is_refused_before_reading(api):
    big = 2 * 1024 * 1024 + (1 << 20) + 1
    resp = await api.post(
        "/v1/jobs",
        content=b"x",  # the declared length alone decides
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(big)},
    )
    assert_problem(resp, 413, "payload_too_large")


async def test_streamed_oversize_body_is_cut_off_while_streaming(api):
    """No Content-Length: the cap is enforced as chunks arrive, and the partial file is gone."""
    sent = 0

    async def body():
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        for _ in range(64):  # 64 x 64 KiB = 4 MiB against a 1 MiB cap
            sent += 1
            yield b"\x89PNG" + bytes(65532)

    resp = await api.post(
        "/v1/jobs", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_problem(resp, 413, "payload_too_large")
    assert sent < 64
    assert not any((api.app_state.storage.root / "inputs").glob("*/*"))


async def test_queue_full_answers_503_with_retry_after(settings):
    async with serve_app(settings(max_queue_depth=1, queue_full_retry_after_s=7)) as api:
        assert (await api.post("/v1/jobs", files=form(png_bytes()))).status_code == 202
        resp = await api.post("/v1/jobs", files=form(png_bytes()))
        assert_problem(resp, 503, "queue_full")
        assert resp.headers["retry-after"] == "7"


async def test_rate_limit_per_key_answers_429_with_retry_after(settings):
    async with serve_app(settings(submits_per_minute=2)) as api:
        for _ in range(2):
            assert (await api.post("/v1/jobs", files=form(png_bytes()))).status_code == 202
        resp = await api.post("/v1/jobs", files=form(png_bytes()))
        assert_problem(resp, 429, "rate_limited")
        assert 25 <= int(resp.headers["retry-after"]) <= 30  # one token every 30 s
        assert len((await api.get("/v1/jobs")).json()["data"]) == 2
        other = await api.post("/v1/jobs", files=form(png_bytes()), headers=AUTH_B)
        assert other.status_code == 202  # each key has its own bucket


def test_rate_limit_bucket_refills(redis_client):
    per_minute = 300  # 5 tokens a second
    taken = 0
    while (wait := ratelimit.take(redis_client, "k", per_minute)) == 0:
        taken += 1
        assert taken <= 2 * per_minute, "the bucket never ran dry"
    assert taken >= per_minute  # a full minute's worth as a burst
    assert 0 < wait <= 0.2
    time.sleep(wait + 0.05)
    assert ratelimit.take(redis_client, "k", per_minute) == 0
    assert 0 < redis_client.pttl(ratelimit.bucket_key("k")) <= 61_000


async def test_idempotency_key_replays_or_rejects(api):
    headers = {"Idempotency-Key": "abc-123"}
    first = await api.post(
        "/v1/jobs", files=form(png_bytes(), {"task": "caption"}), headers=headers
    )
    again = await api.post(
        "/v1/jobs", files=form(png_bytes(), {"task": "caption"}), headers=headers
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    other = await api.post(
        "/v1/jobs", files=form(png_bytes(), {"task": "extract"}), headers=headers
    )
    assert_problem(other, 422, "invalid_request")
    # scoped per API key: the same header from key B is a new job
    from_b = await api.post(
        "/v1/jobs", files=form(png_bytes(), {"task": "caption"}), headers=headers | AUTH_B
    )
    assert from_b.status_code == 202 and from_b.json()["id"] != first.json()["id"]
    listed = (await api.get("/v1/jobs")).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


async def test_containers_are_accepted_unopened_their_kind_left_to_the_worker(api, tmp_path):
    """The gateway reads the first bytes only (no PyAV): a container's media_type stays null
    until the worker opens it; one it cannot use fails there (tests/e2e/test_jobs_e2e.py)."""
    from tests.media.corpus import subtitles_only, write_video
    from tests.media.test_mpeg_streams import program_stream, transport_stream

    good = write_video(str(tmp_path / "good.mp4"), frames=3)
    data = Path(good).read_bytes()
    no_moov = tmp_path / "nomoov.mp4"
    no_moov.write_bytes(data[: data.find(b"moov") - 4])
    for path in (
        transport_stream(str(tmp_path / "a.ts")),
        transport_stream(str(tmp_path / "a.m2ts"), m2ts=True),
        program_stream(str(tmp_path / "a.vob")),
        good,
        str(no_moov),  # unreadable: the worker fails it with media_unreadable
        subtitles_only(str(tmp_path / "subs.mkv")),  # neither video nor audio: likewise
    ):
        with open(path, "rb") as f:
            resp = await api.post("/v1/jobs", files=form(f.read(), name=os.path.basename(path)))
        assert resp.status_code == 202, (path, resp.text)
        job = (await api.get(f"/v1/jobs/{resp.json()['id']}")).json()
        assert job["media_type"] is None, path
    resp = await api.post("/v1/jobs", files=form(wav_bytes()))  # plain audio: known from bytes
    assert (await api.get(f"/v1/jobs/{resp.json()['id']}")).json()["media_type"] == "audio"
    resp = await api.post("/v1/jobs", files=form(data, {"media_type": "audio"}))  # declared
    assert (await api.get(f"/v1/jobs/{resp.json()['id']}")).json()["media_type"] == "audio"
    playlist = b"#EXTM3U\n#EXTINF:2,\nhttp://example.com/a.ts\n#EXT-X-ENDLIST\n"
    resp = await api.post("/v1/jobs", files=form(playlist, name="index.ts"))
    assert "playlist" in assert_problem(resp, 415, "unsupported_media_type")["detail"]
