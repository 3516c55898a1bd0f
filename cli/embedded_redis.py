"""A private `redis-server` on a free loopback port: `omnibatch serve` starts one when no
OMNIBATCH_REDIS_URL is set, and the tests start theirs through the same class.

Loopback only, append-only file in its data dir (fsync every second by default) so a restart
loses no job, `noeviction` so Redis refuses writes rather than dropping queued jobs when
memory runs out.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

START_TIMEOUT_S = 10.0  # AOF replay of a large queue included


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """`appendfsync` is Redis's AOF fsync policy ("always", "everysec", "no"); None turns the
    AOF off, so the server keeps nothing across a restart."""

    def __init__(
        self, data_dir: Path, port: int | None = None, appendfsync: str | None = "everysec"
    ):
        self.dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: install it (e.g. apt-get install redis-server)"
                " or set OMNIBATCH_REDIS_URL"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.appendfsync is None:
            aof = ["--appendonly", "no"]
        else:
            aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            *aof,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                # AOF replay finishes before Redis answers PING with anything but LOADING.
                if client.ping():
                    return self.url
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited: {self.proc.stderr.read().decode()[-500:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """SIGTERM: Redis flushes the AOF and exits."""
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc = None
