"""`/v1/batches`: OpenAI's Batch API over the job system (service/batches/): create, read, list,
cancel. The batch runner (service/batches/runner.py) does the work; these routes only create
records and change statuses."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool

from contract.schemas import Problem
from service import ratelimit
from service.batches import filestore, store
from service.batches.ids import BATCH_ID_RE, BATCH_PREFIX, new_id
from service.batches.models import (
    CHAT_ENDPOINT,
    COMPLETION_WINDOW,
    Batch,
    BatchCreate,
    BatchList,
    BatchStatus,
)
from service.batches.store import BatchRecord
from service.deps import AppState, Owner, State
from service.errors import PROBLEM_JSON, BadRequest, Conflict, NotFound, RateLimited

router = APIRouter(prefix="/v1", tags=["batches"])
_ERRORS = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (400, 401, 404, 409, 429)
}
_CANCELLABLE = (BatchStatus.validating, BatchStatus.in_progress)


async def get_batch(
    batch_id: Annotated[str, Path(description="a batch id, `batch_…`")], owner: Owner, state: State
) -> BatchRecord:
    """The caller's batch; another key's batch is indistinguishable from a missing one."""
    rec = await run_in_threadpool(store.load, state.redis, batch_id)
    if rec is None or rec.owner != owner:
        raise NotFound(f"no batch {batch_id}" if BATCH_ID_RE.match(batch_id) else "no such batch")
    return rec


OwnedBatch = Annotated[BatchRecord, Depends(get_batch)]


def _create(state: AppState, owner: str, body: BatchCreate) -> BatchRecord:
    if body.endpoint != CHAT_ENDPOINT:
        raise BadRequest(
            f"endpoint {body.endpoint!r} is not supported; batches run {CHAT_ENDPOINT} only"
        )
    if body.completion_window != COMPLETION_WINDOW:
        raise BadRequest(f"completion_window must be {COMPLETION_WINDOW!r}")
    s = state.settings
    wait = ratelimit.take(state.redis, owner, s.submits_per_minute)
    if wait > 0:
        raise RateLimited(f"more than {s.submits_per_minute} submits a minute", wait)
    file = filestore.load(state.redis, body.input_file_id)
    if file is None or file.owner != owner:
        raise NotFound(f"no file {body.input_file_id}")
    if file.purpose != "batch":
        raise BadRequest("input_file_id must name a file uploaded with purpose 'batch'")
    rec = store.new_record(new_id(BATCH_PREFIX), owner, file.id, body.endpoint, body.metadata)
    store.create(state.redis, rec)
    return rec


@router.post("/batches", response_model=Batch, responses=_ERRORS)
async def create_batch(body: BatchCreate, state: State, owner: Owner) -> Batch:
    """Start a batch over an uploaded JSONL file (`purpose=batch`). It is `validating` at
    first; poll it until `completed`, `failed`, `expired` or `cancelled`."""
    rec = await run_in_threadpool(_create, state, owner, body)
    return rec.public()


@router.get("/batches", response_model=BatchList, responses=_ERRORS)
async def list_batches(
    state: State,
    owner: Owner,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """The caller's batches, newest first; pass the last id back as `after` for the next page."""
    if after is not None and not BATCH_ID_RE.match(after):
        raise BadRequest("malformed 'after' cursor")
    page, more = await run_in_threadpool(store.list_batches, state.redis, owner, after, limit)
    data = [rec.public() for rec in page]
    return BatchList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
        has_more=more,
    )  # fmt: skip


@router.get("/batches/{batch_id}", response_model=Batch, responses=_ERRORS)
async def get_batch_object(batch: OwnedBatch) -> Batch:
    return batch.public()


def _cancel(state: AppState, rec: BatchRecord) -> BatchRecord:
    now = int(time.time())
    store.transition(
        state.redis, rec.id, _CANCELLABLE, status=BatchStatus.cancelling, cancelling_at=now
    )
    rec = store.load(state.redis, rec.id) or rec
    if rec.status not in (BatchStatus.cancelling, BatchStatus.cancelled):
        raise Conflict(f"the batch is {rec.status.value}; it can no longer be cancelled")
    return rec


@router.post("/batches/{batch_id}/cancel", response_model=Batch, responses=_ERRORS)
async def cancel_batch(state: State, batch: OwnedBatch) -> Batch:
    """`cancelling` until its running jobs stop at a safe point, then `cancelled`; the lines
    that finished are in its output file."""
    rec = await run_in_threadpool(_cancel, state, batch)
    return rec.public()
