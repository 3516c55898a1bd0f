"""`omnibatch gateway` and `omnibatch serve` (gateway + workers + webhook delivery at once)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import uvicorn

from service.embedded_redis import EmbeddedRedis
from service.settings import CommonSettings, GatewaySettings

log = logging.getLogger("omnibatch.serve")
CHILD_STOP_S = 60.0  # how long `serve` waits for a worker to hand its jobs back on exit


def run_gateway(host: str | None, port: int | None) -> int:
    from service.main import create_app

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = GatewaySettings(**overrides)
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


def serve(host: str, port: int, workers: int) -> int:
    redis = None
    if "OMNIBATCH_REDIS_URL" not in os.environ:
        redis = EmbeddedRedis(CommonSettings().data_dir / "redis")
        os.environ["OMNIBATCH_REDIS_URL"] = redis.start()
        log.info("embedded redis-server at %s (AOF in %s)", redis.url, redis.dir)
    cli = [sys.executable, "-m", "service.cli"]
    children = [subprocess.Popen([*cli, "worker", "--device", d]) for d in _worker_devices(workers)]
    children.append(subprocess.Popen([*cli, "webhooks"]))
    try:
        return run_gateway(host, port)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=CHILD_STOP_S)
            except subprocess.TimeoutExpired:
                child.kill()
        if redis is not None:
            redis.stop()
