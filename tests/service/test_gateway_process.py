"""The gateway as a real uvicorn process: large uploads stream to disk with flat memory, and
queued jobs survive a restart of an AOF-backed redis-server."""

from __future__ import annotations

import httpx

from tests.service.conftest import AUTH_A, png_bytes

MiB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) / 1024


def multipart_stream(size: int, boundary: str = "bnd"):
    disposition = 'Content-Disposition: form-data; name="file"; filename="a"'
    yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
    yield png_bytes()[:16]
    chunk = bytes(MiB)
    for _ in range(size // MiB):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_big_uploads_keep_memory_flat(gateway, redis_url, tmp_path):
    url = gateway(redis_url, OMNIBATCH_MAX_UPLOAD_MB="24")
    headers = AUTH_A | {"content-type": "multipart/form-data; boundary=bnd"}
    with httpx.Client(base_url=url, headers=AUTH_A, timeout=60) as client:
        files = {"file": ("a.png", png_bytes())}
        assert client.post("/v1/jobs", files=files).status_code == 202  # warm up
        before = peak_rss_mib(gateway.pid)
        resp = client.post("/v1/jobs", content=multipart_stream(20 * MiB), headers=headers)
        assert resp.status_code == 202, resp.text
        stored = tmp_path / "data" / "inputs" / resp.json()["id"] / "input"
        assert stored.stat().st_size == 20 * MiB + 16
        resp = client.post("/v1/jobs", content=multipart_stream(64 * MiB), headers=headers)
        assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large"
        assert client.get("/healthz").status_code == 200
    assert peak_rss_mib(gateway.pid) - before < 12  # a 20 MiB body never sat in memory


def test_queued_jobs_survive_a_redis_restart(gateway, make_redis_server):
    server = make_redis_server(aof=True)
    url = gateway(server.url)
    with httpx.Client(base_url=url, headers=AUTH_A, timeout=30) as client:
        ids = [
            client.post("/v1/jobs", files={"file": ("a.png", png_bytes())}).json()["id"]
            for _ in range(3)
        ]
        server.stop()
        server.start()
        listed = [j["id"] for j in client.get("/v1/jobs").json()["data"]]
        assert listed == ids[::-1]
        positions = [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids]
        assert positions == [0, 1, 2]
