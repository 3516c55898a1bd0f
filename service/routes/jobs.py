"""`/v1/jobs`: submit, read (with long-poll), list, result, cancel, delete."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from contract import jobstore
from contract.jobstore import JobRecord
from contract.schemas import (
    JOB_ID_RE,
    JobList,
    JobPublic,
    JobResult,
    JobStatus,
    JobSubmitted,
    Links,
)
from service import joblist, submit, webhooks
from service.deps import AppState, OwnedJob, Owner, State
from service.errors import Conflict, UnsupportedMediaType, problem_responses

router = APIRouter(prefix="/v1", tags=["jobs"])
POLL_INTERVAL_S = 0.2


_ERRORS = problem_responses(401, 404, 409, 413, 415, 422, 429, 503)
_SUBMIT_ERRORS = _ERRORS | problem_responses(400, 408)  # a malformed form; a body that stalled
# The two doors' request schemas are built from JobCreate in service/main.py.
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "minLength": 1},
                        "request": {"$ref": "#/components/schemas/JobCreateUpload"},
                    },
                    "additionalProperties": False,
                },
                "encoding": {"request": {"contentType": "application/json"}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreateUrl"}},
        },
    }
}
CURSOR = Query(
    pattern=f"^({JOB_ID_RE.pattern.strip('^$')})?$",
    description="`next_cursor` of the previous page; empty or absent: the first page",
)


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _links(request: Request, job_id: str) -> Links:
    base = str(request.base_url).rstrip("/")
    return Links(self=f"{base}/v1/jobs/{job_id}", result=f"{base}/v1/jobs/{job_id}/result")


def to_public(state: AppState, request: Request, rec: JobRecord) -> JobPublic:
    position = None
    if rec.status is JobStatus.queued:
        position = joblist.queue_position(state.redis, rec)
    return JobPublic(
        id=rec.id, status=rec.status, task=rec.request.task, priority=rec.priority,
        media_type=rec.media_type, created_at=_ts(rec.created_at), started_at=_ts(rec.started_at),
        finished_at=_ts(rec.finished_at), progress=rec.progress, queue_position=position,
        usage=rec.usage, error=rec.error, metadata=rec.request.metadata, webhook=rec.webhook,
        links=_links(request, rec.id),
    )  # fmt: skip


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobSubmitted,
    responses={200: {"model": JobSubmitted, "description": "Idempotent replay"}, **_SUBMIT_ERRORS},
    openapi_extra=_SUBMIT_BODY,
)
async def create_job(
    request: Request,
    response: Response,
    state: State,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobSubmitted:
    """Submit media as a multipart upload (`file` + `request`) or JSON with `input.url`."""
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    if not multipart and not content_type.startswith("application/json"):
        raise UnsupportedMediaType("send multipart/form-data or application/json")
    await run_in_threadpool(
        submit.check_capacity, state, owner, request.headers.get("content-length"), multipart
    )
    rec, created = await submit.submit(
        state, owner, request.stream(), content_type, str(request.base_url), idempotency_key
    )
    response.status_code = 202 if created else 200
    response.headers["Location"] = _links(request, rec.id).self
    return JobSubmitted(
        id=rec.id, status=rec.status, created_at=_ts(rec.created_at), links=_links(request, rec.id)
    )


@router.get("/jobs", response_model=JobList, responses=_ERRORS)
async def list_jobs(
    request: Request,
    state: State,
    owner: Owner,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, CURSOR] = None,
) -> JobList:
    """The caller's jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    page, next_cursor = await run_in_threadpool(
        joblist.list_jobs, state.redis, owner, status, limit, cursor or None
    )
    data = [await run_in_threadpool(to_public, state, request, rec) for rec in page]
    return JobList(data=data, next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=_ERRORS)
async def get_job(
    request: Request,
    state: State,
    job: OwnedJob,
    wait: Annotated[
        float, Query(ge=0, le=60, description="long-poll up to this many seconds")
    ] = 0,
) -> JobPublic:
    deadline = time.monotonic() + min(wait, state.settings.max_wait_s)
    while not job.status.terminal and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        job = await run_in_threadpool(jobstore.load, state.redis, job.id) or job
    return await run_in_threadpool(to_public, state, request, job)


@router.get("/jobs/{job_id}/result", response_model=JobResult, responses=_ERRORS)
async def get_result(state: State, job: OwnedJob) -> JobResult:
    if not job.status.terminal:
        raise Conflict(f"the job is {job.status.value}; the result is ready when it succeeds")
    result = await run_in_threadpool(state.storage.read_result, job.result) if job.result else None
    if result is None:
        raise Conflict(f"the job {job.status.value} without a result")
    return result


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobPublic, responses=_ERRORS)
async def cancel_job(request: Request, state: State, job: OwnedJob) -> JobPublic:
    """Queued: cancelled now. Running: stops at the next safe point. Finished: unchanged."""
    job = await run_in_threadpool(jobstore.cancel, state.redis, state.storage, job)
    return await run_in_threadpool(to_public, state, request, job)


@router.delete("/jobs/{job_id}", status_code=204, responses=_ERRORS)
async def delete_job(state: State, job: OwnedJob) -> Response:
    """Removes the job, its stored input and its result (a running job is cancelled first)."""
    await run_in_threadpool(jobstore.delete, state.redis, state.storage, job)
    return Response(status_code=204)


@router.get("/webhook-secret", tags=["webhooks"], responses=_ERRORS)
async def webhook_secret(state: State, owner: Owner) -> dict[str, str]:
    """This key's default webhook signing secret (`whsec_…`), used when a job gives none."""
    secret = await run_in_threadpool(
        webhooks.default_secret, state.redis, owner, state.settings.webhook_secret
    )
    return {"secret": secret}
