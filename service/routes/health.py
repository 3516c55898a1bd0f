"""Liveness, readiness and Prometheus metrics (no auth: scraped by orchestrators)."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from contract import metrics
from contract.schemas import WORKER_HEARTBEAT_PREFIX, Problem
from service.deps import State
from service.errors import PROBLEM_JSON, NotReady

router = APIRouter(tags=["health"])


def ready_workers(r: redis.Redis) -> int:
    """Workers whose heartbeat hash is alive and says the model is loaded."""
    count = 0
    for key in r.scan_iter(match=f"{WORKER_HEARTBEAT_PREFIX}*", count=100):
        if r.hget(key, "model_loaded") == b"1":
            count += 1
    return count


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": "Not ready"}},
)
async def readyz(state: State) -> dict[str, str | int]:
    try:
        workers = await run_in_threadpool(ready_workers, state.redis)
    except redis.RedisError as exc:
        raise NotReady("Redis is not reachable") from exc
    if workers == 0:
        raise NotReady("no worker has its model loaded yet")
    return {"status": "ready", "workers": workers}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(state: State) -> PlainTextResponse:
    text = await run_in_threadpool(metrics.render, state.redis)
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)
