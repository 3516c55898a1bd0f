"""Shared fixtures: a real `redis-server` (`cli.embedded_redis.EmbeddedRedis`) for every
test that needs Redis.

- `redis_server` (session): one redis-server on a free loopback port in a temp dir, no
  persistence. Its `.url` is `redis://127.0.0.1:{port}/0`.
- `redis_url` (function): that server's URL, with the database flushed before the test.
- `redis_client` (function): a bytes (`decode_responses=False`, as RQ needs) client on it.
- `make_redis_server` (function): a factory for a private server, `make_redis_server(aof=True)`,
  with `.stop()` / `.start()` to restart it on the same port and data dir; `aof=True` fsyncs
  every write, so a restart keeps everything acknowledged. Stopped after the test.
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

import pytest
import redis

from cli.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync=None)
    server.start()
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
    servers: list[EmbeddedRedis] = []

    def make(aof: bool = False) -> EmbeddedRedis:
        fsync = "always" if aof else None
        server = EmbeddedRedis(tmp_path / f"redis{len(servers)}", appendfsync=fsync)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(OmniModel, PromptBuilder) of a freshly written demo checkpoint, on the CPU."""
    from workers.model.demo import write_demo_checkpoint
    from workers.model.loader import load_model
    from workers.model.prompt import PromptBuilder

    d = tmp_path_factory.mktemp("demo")
    write_demo_checkpoint(d)
    model, _ = load_model(d, "cpu")
    return model, PromptBuilder.from_dir(d)
