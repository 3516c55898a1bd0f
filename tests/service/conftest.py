"""Gateway test fixtures: the app in-process over ASGI against the real Redis of tests/conftest.py,
a loopback HTTP receiver for URL ingestion and webhooks, and small generated media.

- `settings(**overrides)`: GatewaySettings on the test Redis and a temp DATA_DIR, two API keys.
- `serve_app(settings)`: async context manager → httpx client (key A) on a started app.
- `api` (async): `serve_app(settings())`.
- `wait_healthy(url, proc)`: until a gateway process answers /healthz.
- `gateway(redis_url, **env)`: the gateway as a real uvicorn process on a free port (key A,
  DATA_DIR under tmp_path, extra `OMNIBATCH_*` env); returns its base URL, `gateway.pid`.
- `receiver`: threaded http.server on 127.0.0.1; `receiver.replies` is a list of
  (status, headers, body) answered in order (the last one repeats); `receiver.requests`
  records (path, headers, body) of everything it got.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import wave
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from cli.embedded_redis import free_port
from contract.settings import GatewaySettings
from service.main import create_app

KEY_A = "key-alpha-0123456789abcdef"
KEY_B = "key-bravo-0123456789abcdef"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def settings(redis_url, tmp_path):
    def make(**overrides) -> GatewaySettings:
        values = {
            "redis_url": redis_url,
            "data_dir": tmp_path / "data",
            "api_keys": [f"alpha:{KEY_A}", f"bravo:{KEY_B}"],
            "max_upload_mb": 1,
            "url_fetch_timeout_s": 5.0,
        }
        return GatewaySettings(**(values | overrides))

    return make


@asynccontextmanager
async def serve_app(settings: GatewaySettings, headers: dict[str, str] = AUTH_A):
    """A started app and an httpx client on it; `client.app_state` is the app's AppState."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            client.app_state = app.state.omnibatch
            yield client


@pytest.fixture
async def api(settings):
    async with serve_app(settings()) as client:
        yield client


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.1, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x01" * int(seconds * rate))
    return buf.getvalue()


class Receiver:
    def __init__(self):
        self.replies: list[tuple[int, dict[str, str], bytes]] = [(200, {}, b"ok")]
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bytes) -> None:
                receiver.requests.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                n = min(len(receiver.requests), len(receiver.replies)) - 1
                status, headers, payload = receiver.replies[n]
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                receiver.got.set()

            def do_GET(self):
                self._answer(b"")

            def do_POST(self):
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver():
    rec = Receiver()
    rec.thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Until the gateway process at `url` answers /healthz (it must not exit meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)


@pytest.fixture
def gateway(tmp_path):
    procs = []

    def start(redis_url: str, **env) -> str:
        port = free_port()
        env = (
            os.environ
            | {
                "OMNIBATCH_REDIS_URL": redis_url,
                "OMNIBATCH_DATA_DIR": str(tmp_path / "data"),
                "OMNIBATCH_API_KEYS": f"alpha:{KEY_A}",
            }
            | env
        )
        cmd = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        start.pid = proc.pid
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
