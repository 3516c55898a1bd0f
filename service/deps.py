"""FastAPI dependencies as `Annotated` aliases: the app's state, the caller, the caller's job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contract import jobstore
from contract.jobstore import JobRecord
from contract.schemas import JOB_ID_RE
from contract.settings import GatewaySettings
from contract.storage import Storage
from service.auth import KeyRing
from service.errors import NotFound
from service.urlguard import UrlGuard

_bearer = HTTPBearer(auto_error=False, description="API key")


@dataclass(frozen=True)
class AppState:
    settings: GatewaySettings
    redis: redis.Redis
    storage: Storage
    keys: KeyRing
    guard: UrlGuard


def get_state(request: Request) -> AppState:
    return request.app.state.omnibatch


State = Annotated[AppState, Depends(get_state)]


def get_owner(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    request: Request,
) -> str:
    return state.keys.owner(request.headers.get("authorization"))


Owner = Annotated[str, Depends(get_owner)]


async def get_job(
    job_id: Annotated[str, Path(description="a job id, `job_…`")], owner: Owner, state: State
) -> JobRecord:
    """The caller's job; another key's job is indistinguishable from a missing one."""
    rec = None
    if JOB_ID_RE.match(job_id):
        rec = await run_in_threadpool(jobstore.load, state.redis, job_id)
    if rec is None or rec.owner != owner:
        raise NotFound(f"no job {job_id}" if JOB_ID_RE.match(job_id) else "no such job")
    return rec


OwnedJob = Annotated[JobRecord, Depends(get_job)]
