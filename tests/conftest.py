"""Shared fixtures: a real `redis-server` for every test that needs Redis.

- `redis_server` (session): one redis-server on a free loopback port in a temp dir, no
  persistence. Its `.url` is `redis://127.0.0.1:{port}/0`.
- `redis_url` (function): that server's URL, with the database flushed before the test.
- `redis_client` (function): a bytes (`decode_responses=False`, as RQ needs) client on it.
- `make_redis_server` (function): a factory for a private server, `make_redis_server(aof=True)`,
  with `.stop()` / `.start()` to restart it on the same port and data dir; stopped after the test.
"""

from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels run in its interpreter. Triton reads the switch when it is
# first imported, and tests of the model import it early (through workers.model.ops).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import numpy as np
    import triton.runtime.interpreter as _interp

    _patch_lang_tensor = _interp._patch_lang_tensor

    def _patch_with_index(tensor, scope):
        # triton 3.6's interpreter calls int() on a 1-element array for loop bounds held in
        # tensors, which numpy >= 2.4 refuses; index through .item() instead.
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).item()))

    _interp._patch_lang_tensor = _patch_with_index

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, data_dir: Path, aof: bool = False):
        self.dir = data_dir
        self.port = free_port()
        self.aof = aof
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "yes" if self.aof else "no"]
        args += ["--appendfsync", "always"] if self.aof else []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    client.close()


@pytest.fixture
def make_redis_server(tmp_path):
    servers: list[RedisServer] = []

    def make(aof: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", aof)
        server.dir.mkdir()
        servers.append(server.start())
        return server

    yield make
    for server in servers:
        server.stop()
