"""The gateway as a real uvicorn process when things around it fail: Redis stopped, Redis still
loading its data after a restart, and clients that stop sending halfway through a body."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time

import httpx
import redis

from tests.service.conftest import AUTH_A, png_bytes

STALL_S = 1.0  # OMNIBATCH_UPLOAD_IDLE_TIMEOUT_S of the stall test


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, (resp.request.method, resp.request.url, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "service_unavailable"
    assert int(resp.headers["retry-after"]) >= 1


async def every_endpoint(url: str, job_id: str) -> list[httpx.Response]:
    """One request to each endpoint that needs Redis, all at once."""
    job = f"/v1/jobs/{job_id}"
    async with httpx.AsyncClient(base_url=url, headers=AUTH_A, timeout=30) as client:
        return await asyncio.gather(
            client.post("/v1/jobs", files={"file": ("a.png", png_bytes())}),
            client.post("/v1/jobs", json={"input": {"url": "http://example.com/a.png"}}),
            client.get("/v1/jobs"),
            client.get(job),
            client.get(f"{job}/result"),
            client.post(f"{job}/cancel"),
            client.delete(job),
            client.get("/v1/webhook-secret"),
            client.get("/metrics"),
        )


def test_redis_outage_answers_503_with_retry_after(gateway, make_redis_server, tmp_path):
    server = make_redis_server(aof=True)
    url = gateway(server.url)
    job_id = httpx.post(
        f"{url}/v1/jobs", files={"file": ("a.png", png_bytes())}, headers=AUTH_A
    ).json()["id"]
    server.stop()
    for resp in asyncio.run(every_endpoint(url, job_id)):
        assert_unavailable(resp)
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
    inputs = tmp_path / "data" / "inputs"
    assert [p.name for p in inputs.iterdir()] == [job_id]  # the refused upload left nothing
    server.start()
    resp = httpx.get(f"{url}/v1/jobs/{job_id}", headers=AUTH_A)
    assert resp.status_code == 200 and resp.json()["status"] == "queued"


def test_a_redis_that_stops_answering_gets_503_not_a_hung_request(gateway, make_redis_server):
    """SIGSTOP keeps the connections open and answers nothing: only the gateway's reply
    timeout turns that into a 503 (redis-py's retries included, well under a client's 30 s)."""
    server = make_redis_server()
    url = gateway(server.url)
    assert httpx.get(f"{url}/v1/jobs", headers=AUTH_A).status_code == 200
    server.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        resp = httpx.get(f"{url}/v1/jobs", headers=AUTH_A, timeout=60)
        took = time.monotonic() - start
        assert_unavailable(resp)
        assert took < 20, took
    finally:
        server.proc.send_signal(signal.SIGCONT)
    resp = httpx.get(f"{url}/v1/jobs", headers=AUTH_A, timeout=30)
    assert resp.status_code == 200, resp.text


def test_redis_loading_after_a_restart_answers_503(gateway, make_redis_server):
    """Right after a restart Redis answers LOADING until its data is read back."""
    server = make_redis_server()
    url = gateway(server.url)
    job_id = httpx.post(
        f"{url}/v1/jobs", files={"file": ("a.png", png_bytes())}, headers=AUTH_A
    ).json()["id"]
    client = redis.Redis.from_url(server.url)
    with client.pipeline(transaction=False) as pipe:
        for i in range(6000):
            pipe.set(f"filler:{i}", "x")
        pipe.execute()
    client.save()  # dump.rdb in the server's dir
    client.close()
    server.stop()
    # The same data dir and port, reading back slowly (1 ms a key) and answering LOADING
    # between keys: longer than redis-py's own retries (about 4 s) wait out.
    loading = subprocess.Popen(
        [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(server.port),
         "--dir", str(server.dir), "--appendonly", "no", "--save", "",
         "--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        statuses = []
        deadline = time.monotonic() + 60
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline, statuses
            resp = httpx.get(f"{url}/v1/jobs", headers=AUTH_A, timeout=30)
            if resp.status_code != 200:
                assert_unavailable(resp)
            statuses.append(resp.status_code)
        assert 503 in statuses
        assert [j["id"] for j in resp.json()["data"]] == [job_id]
    finally:
        loading.terminate()
        loading.wait(10)


def stall(url: str, head: bytes, body_part: bytes) -> tuple[bytes, float]:
    """Send the headers and part of the body, then nothing; returns (what the server said
    until it closed the connection, seconds that took)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body_part)
        sock.settimeout(STALL_S + 10)
        start, got = time.monotonic(), b""
        while chunk := sock.recv(65536):
            got += chunk
        return got, time.monotonic() - start


def test_half_sent_bodies_are_cut_off(gateway, redis_url, tmp_path):
    url = gateway(redis_url, OMNIBATCH_UPLOAD_IDLE_TIMEOUT_S=str(STALL_S))
    auth = AUTH_A["Authorization"].encode()
    part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        + png_bytes()
    )
    upload = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    )
    json_body = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    for head, body_part in ((upload, part), (json_body, b'{"input": {"url": "http://')):
        got, took = stall(url, head, body_part)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert b'"code":"request_timeout"' in got
        assert STALL_S <= took < STALL_S + 5
    assert not any((tmp_path / "data" / "inputs").glob("*/*"))
    assert httpx.get(f"{url}/healthz").status_code == 200
