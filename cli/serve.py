"""`omnibatch gateway` and `omnibatch serve` (gateway + workers + webhook delivery at once).

Shutdown, on SIGTERM as on SIGINT: the gateway stops taking requests, then `serve` sends
SIGTERM to its workers (their jobs finish within SHUTDOWN_GRACE_S or go back to the queue)
and to the delivery process, waits for them, and stops its embedded redis-server last.
uvicorn re-raises a signal it handled once it has shut down; left at its default, SIGTERM
would then kill the process before any of that (the children were orphaned), so both
commands install a handler that turns it into an ordinary exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import uvicorn

from cli.embedded_redis import EmbeddedRedis
from contract.settings import CommonSettings, GatewaySettings, WorkerSettings

log = logging.getLogger("omnibatch.serve")
STOP_MARGIN_S = 30.0  # on top of the workers' grace: the delivery process, the exits
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 60.0)  # a child that keeps dying is restarted slower
STABLE_S = 60.0  # a child that lived this long starts over at the first backoff


def _exit_on_signal(signum, frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the shutdown short
    raise SystemExit(0)


def _exit_on_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)


def run_gateway(host: str | None, port: int | None) -> int:
    from service.main import create_app

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = GatewaySettings(**overrides)
    _exit_on_signals()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


def _worker_devices(count: int) -> list[str]:
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return ["cpu"] * count
    if count > gpus:
        raise SystemExit(f"--workers {count}: this host has {gpus} GPU(s); use one worker per GPU")
    return [f"cuda:{i}" for i in range(count)]


class Children:
    """The worker and delivery processes of `serve`. One that exits on its own (a worker
    whose engine died exits 1) is started again, later each time it keeps dying."""

    def __init__(self, commands: list[list[str]], env: dict[str, str]):
        self.commands, self.env = commands, env
        self.procs = [self._start(cmd) for cmd in commands]
        self.started = [time.monotonic()] * len(commands)
        self.failures = [0] * len(commands)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="children", daemon=True)
        self._thread.start()

    def _start(self, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=self.env)

    def _supervise(self) -> None:
        due: dict[int, float] = {}  # child index → when to start it again
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for i, proc in enumerate(self.procs):
                if proc.poll() is None or self._stop.is_set():
                    continue
                if i not in due:
                    quick = now - self.started[i] < STABLE_S
                    self.failures[i] = self.failures[i] + 1 if quick else 0
                    wait = RESTART_BACKOFF_S[min(self.failures[i], len(RESTART_BACKOFF_S) - 1)]
                    what = " ".join(self.commands[i][3:])
                    log.warning("%s exited with %s; again in %g s", what, proc.returncode, wait)
                    due[i] = now + wait
                if now >= due[i]:
                    del due[i]
                    self.procs[i], self.started[i] = self._start(self.commands[i]), now

    def stop(self, timeout_s: float) -> None:
        """SIGTERM to every child, then wait for them all (SIGKILL past `timeout_s`)."""
        self._stop.set()
        self._thread.join()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("pid %d did not stop within %g s: killed", proc.pid, timeout_s)
                proc.kill()
                proc.wait()


def serve(host: str, port: int, workers: int) -> int:
    from workers.media_budget import shm_budget

    _exit_on_signals()
    redis, children = None, None
    try:
        if "OMNIBATCH_REDIS_URL" not in os.environ:
            redis = EmbeddedRedis(CommonSettings().data_dir / "redis")
            os.environ["OMNIBATCH_REDIS_URL"] = redis.start()
            log.info("embedded redis-server at %s (AOF in %s)", redis.url, redis.dir)
        env = dict(os.environ)
        # The workers of one host share its cores for decoding (MEDIA_WORKERS) and its
        # /dev/shm for the decoded media waiting for the GPU (MEDIA_GB).
        env.setdefault("OMNIBATCH_MEDIA_WORKERS", str(max(1, (os.cpu_count() or 1) // workers)))
        env.setdefault("OMNIBATCH_MEDIA_GB", f"{shm_budget() / workers / 1e9:.3f}")
        cli = [sys.executable, "-m", "cli.main"]
        commands = [[*cli, "worker", "--device", d] for d in _worker_devices(workers)]
        children = Children([*commands, [*cli, "webhooks"]], env)
        return run_gateway(host, port)
    finally:
        if children is not None:
            children.stop(WorkerSettings().shutdown_grace_s + STOP_MARGIN_S)
        if redis is not None:
            redis.stop()
