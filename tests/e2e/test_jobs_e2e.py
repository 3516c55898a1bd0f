"""Every media kind through the whole service, signed webhooks, cancel, per-key isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.webhooks import verify
from tests.e2e.conftest import WEBHOOK_SECRET, WebhookReceiver, make_stack
from tests.media.corpus import subtitles_only

SMALL = {"generation": {"max_tokens": 4}, "webhook": {"url": "", "secret": WEBHOOK_SECRET}}


@pytest.fixture(scope="module")
def live(tmp_path_factory, demo_cache):
    stack = make_stack(tmp_path_factory.mktemp("e2e-jobs"), demo_cache)
    stack.start_gateway()
    stack.spawn("webhooks", "webhooks")
    stack.start_worker()
    yield stack
    stack.stop_all()
    stack.redis.stop()


def _request(receiver, **extra) -> dict:
    request = json.loads(json.dumps(SMALL)) | extra
    request["webhook"]["url"] = receiver.url
    return request


def test_each_media_kind_succeeds_with_a_signed_webhook(live, media, receiver):
    kinds = ["video", "audio", "image", "document"]
    ids = {
        kind: live.submit(media[kind], **_request(receiver, metadata={"kind": kind}))
        for kind in kinds
    }
    for kind, job_id in ids.items():
        job = live.finished(job_id)
        assert job["status"] == "succeeded", (kind, job)
        assert job["media_type"] == kind
        assert job["usage"]["output_tokens"] >= 1
        with live.client() as c:
            result = c.get(f"/v1/jobs/{job_id}/result").json()
        assert result["status"] == "succeeded" and result["metadata"] == {"kind": kind}
        assert isinstance(result["output"]["text"], str)
        assert result["model"]["name"] == "demo-random"
        assert "meaningless" in result["output"]["warning"]
    assert ids["video"] and live.job(ids["video"])["usage"]["video_seconds"] > 0
    assert live.job(ids["audio"])["usage"]["audio_seconds"] > 0
    assert live.job(ids["document"])["usage"]["pages"] == 1

    for kind, job_id in ids.items():
        live.wait_for(job_id, lambda j: (j.get("webhook") or {}).get("state") == "delivered")
        (headers, body), *rest = receiver.for_job(job_id)
        assert not rest, f"{kind}: one delivery per terminal status"
        assert verify(WEBHOOK_SECRET, headers, body)
        event = json.loads(body)
        assert event["type"] == "job.succeeded"
        assert event["data"]["result_url"].endswith(f"/v1/jobs/{job_id}/result")
        assert not verify(WEBHOOK_SECRET, headers, body + b" "), "signature covers the body"


def test_another_key_sees_404(live, media):
    job_id = live.submit(media["image"], who="alice", generation={"max_tokens": 2})
    with live.client("bob") as c:
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result"):
            resp = c.get(path)
            assert resp.status_code == 404 and resp.json()["code"] == "not_found"
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert job_id not in [j["id"] for j in c.get("/v1/jobs").json()["data"]]
    assert live.finished(job_id)["status"] == "succeeded", "bob's attempts did not touch it"


def test_cancel_a_running_job_keeps_it_cancelled(live, media):
    request = {"generation": {"max_tokens": 64}, "video": {"fps": 2, "chunk_s": 1.0}}
    job_id = live.submit(media["long_video"], **request)
    live.wait_for(job_id, lambda j: j["progress"]["stage"] == "generating")
    with live.client() as c:
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = live.finished(job_id)
    assert job["status"] == "cancelled"
    assert job["error"]["code"] == "cancelled"
    assert job["started_at"] is not None
    with live.client() as c:
        result = c.get(f"/v1/jobs/{job_id}/result").json()
    chunks = result["output"]["segments"]
    assert len(chunks) < 12, "stopped at a safe point, keeping what had finished"


def test_undecodable_media_fails_with_its_code(live, media, tmp_path):
    # Container intact (the gateway's sniffing accepts it), every frame's bytes scrambled.
    corrupt = bytearray(media["video"].read_bytes())
    corrupt[100:-2000] = b"\x55" * (len(corrupt) - 2100)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(corrupt)
    job_id = live.submit(path, generation={"max_tokens": 2})
    job = live.finished(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] in {"media_unreadable", "media_unsupported"}
    assert (
        "Traceback" not in job["error"]["message"] and str(live.root) not in job["error"]["message"]
    )
    # A container with neither video nor audio: accepted unopened (the gateway has no PyAV),
    # failed by the worker when it opens the file; its media type stays unknown.
    subs = subtitles_only(str(tmp_path / "subs.mkv"))
    job = live.finished(live.submit(Path(subs), generation={"max_tokens": 2}))
    assert job["status"] == "failed" and job["media_type"] is None
    assert job["error"]["code"] == "media_unreadable" and "neither" in job["error"]["message"]
    assert live.finished(live.submit(media["image"], generation={"max_tokens": 2}))["status"] == (
        "succeeded"
    ), "the worker keeps serving"


def test_a_refused_webhook_is_retried_until_delivered(live, media):
    flaky = WebhookReceiver(failures=2)
    try:
        job_id = live.submit(media["image"], **_request(flaky))
        job = live.wait_for(
            job_id, lambda j: (j.get("webhook") or {}).get("state") == "delivered", timeout=30
        )
        assert job["webhook"]["attempts"] == 3 and job["webhook"]["last_status"] == 200
        assert flaky.refused == 2 and len(flaky.for_job(job_id)) == 1
    finally:
        flaky.close()


def test_worker_health_check_sees_the_loaded_model(live):
    def check(device: str) -> int:
        cmd = [sys.executable, "-m", "cli.main", "worker", "--check", "--device", device]
        return subprocess.run(cmd, env=live.env, timeout=60).returncode

    assert check("cpu") == 0
    assert check("cuda:7") == 1, "no worker of that device on this host"
