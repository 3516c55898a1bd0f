"""End-to-end stack: real redis-server, the gateway under uvicorn, worker and webhook
delivery processes (`python -m cli.main ...`), and an HTTP webhook receiver in-process.

The worker runs the real pipeline with no model configured, so on the demo checkpoint
(written once per session into the cache the pipeline looks in).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis

from cli.embedded_redis import EmbeddedRedis, free_port
from contract.schemas import worker_heartbeat_key
from scripts.make_samples import write_pdf, write_png, write_video, write_wav

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"alice": "alice-" + "a" * 24, "bob": "bob-" + "b" * 26}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-0123456789ab").decode()
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


class WebhookReceiver:
    """Collects POSTed events: (headers, body) per request. Answers 200, except that the
    first `failures` requests get a 503 with `Retry-After: 1`."""

    def __init__(self, failures: int = 0):
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.refused < failures:
                    receiver.refused += 1
                    self.send_response(503)
                    self.send_header("retry-after", "1")
                    self.end_headers()
                    return
                receiver.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def for_job(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.events if json.loads(b)["data"]["job_id"] == job_id]

    def close(self):
        self.server.shutdown()


class Stack:
    """The processes of one deployment, started and stopped by the tests."""

    def __init__(self, root: Path, redis: EmbeddedRedis, cache_dir: Path):
        self.root = root
        self.redis = redis
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "OMNIBATCH_MODEL"}
        self.env = env | {
            "OMNIBATCH_REDIS_URL": redis.url,
            "OMNIBATCH_DATA_DIR": str(root / "data"),
            "OMNIBATCH_API_KEYS": ",".join(f"{n}:{k}" for n, k in KEYS.items()),
            "OMNIBATCH_ALLOW_PRIVATE_URLS": "127.0.0.1/32",
            "XDG_CACHE_HOME": str(cache_dir),
            "OMNIBATCH_DEVICE": "cpu",
            "OMNIBATCH_MAX_CONCURRENT_JOBS": "4",
            "OMNIBATCH_LEASE_TTL_S": "2",
            "OMNIBATCH_SHUTDOWN_GRACE_S": "5",
            "OMNIBATCH_WEBHOOK_BACKOFF_BASE_S": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_gateway(self) -> None:
        self.spawn("gateway", "gateway", "--host", "127.0.0.1", "--port", str(self.port))
        self._wait(lambda: httpx.get(f"{self.base}/healthz").status_code == 200, "gateway")

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        """Start a worker and wait for its own heartbeat to say its model is loaded (a
        SIGKILLed one's heartbeat lingers until it expires, so /readyz alone would not do)."""
        proc = self.spawn(name, "worker", "--device", "cpu")
        r = redis.Redis.from_url(self.redis.url)
        key = worker_heartbeat_key(f"{socket.gethostname()}:cpu:{proc.pid}")
        try:
            self._wait(lambda: r.hget(key, "model_loaded") == b"1", name, 120)
        finally:
            r.close()
        assert httpx.get(f"{self.base}/readyz").status_code == 200
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.procs[name].kill()
            self.procs.pop(name).wait(10)

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{what} not ready: {self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in self.logs.iterdir()
        )

    # -- client ------------------------------------------------------------------------
    def client(self, who: str = "alice") -> httpx.Client:
        auth = {"Authorization": f"Bearer {KEYS[who]}"}
        return httpx.Client(base_url=self.base, headers=auth, timeout=70)

    def submit(self, path: Path, who: str = "alice", **request) -> str:
        with self.client(who) as c, path.open("rb") as media:
            resp = c.post(
                "/v1/jobs", files={"file": (path.name, media)},
                data={"request": json.dumps(request)},
            )  # fmt: skip
        assert resp.status_code == 202, resp.text
        return resp.json()["id"]

    def job(self, job_id: str, who: str = "alice", wait: int = 0) -> dict:
        with self.client(who) as c:
            resp = c.get(f"/v1/jobs/{job_id}", params={"wait": wait} if wait else None)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_for(self, job_id: str, until, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} stuck: {job}\n{self.log_tail()}")

    def finished(self, job_id: str, timeout: float = 90) -> dict:
        return self.wait_for(job_id, lambda j: j["status"] in TERMINAL, timeout)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """XDG_CACHE_HOME for the workers, the demo checkpoint already in it."""
    from workers.pipeline import demo_checkpoint_dir

    cache = tmp_path_factory.mktemp("cache")
    demo_checkpoint_dir(cache / "omnibatch")
    return cache


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "video": write_video(d / "clip.mp4", seconds=2.0),
        "medium_video": write_video(d / "medium.mp4", seconds=6.0),
        "long_video": write_video(d / "long.mp4", seconds=12.0),
        "audio": write_wav(d / "speech.wav", seconds=2.0),
        "image": write_png(d / "picture.png"),
        "document": write_pdf(d / "document.pdf", pages=1),
    }


@pytest.fixture
def receiver():
    rec = WebhookReceiver()
    yield rec
    rec.close()


def make_stack(tmp_path: Path, demo_cache: Path) -> Stack:
    redis = EmbeddedRedis(tmp_path / "redis", appendfsync="always")
    redis.start()
    return Stack(tmp_path, redis, demo_cache)


@pytest.fixture
def stack(tmp_path, demo_cache):
    s = make_stack(tmp_path, demo_cache)
    s.start_gateway()
    yield s
    s.stop_all()
    s.redis.stop()
