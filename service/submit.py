"""Turning one submit request into a queued job: body → validated request + stored input →
sniffed media type → idempotency → job record + RQ enqueue.

The input lands under DATA_DIR before the job exists; every failure path removes it again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from contract import jobstore
from contract.jobstore import JobRecord
from contract.json_grammar import grammar_problem
from contract.schemas import JobCreate, JobStatus, WebhookState
from media.errors import MediaError, MediaTooLarge
from media.limits import MediaLimits
from media.sniff import sniff
from service import idempotency, joblist, ratelimit, webhooks
from service.deps import AppState
from service.errors import (
    InvalidRequest,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    UnsupportedMediaType,
    UrlFetchFailed,
    describe_validation,
)
from service.fetch import fetch_to_sink
from service.input_sink import InputSink
from service.upload import (
    JSON_BODY_MAX,
    JSON_BODY_TOO_LARGE,
    idle_timeout,
    read_form,
    read_small_body,
)

MULTIPART_OVERHEAD = 1 << 20  # form boundaries and the request part, beyond the file itself


def parse_request(raw: bytes | None) -> JobCreate:
    """JSON text → JobCreate in one pass. pydantic's parser refuses JSON nested deeper than
    it can read (a few hundred levels), where json.loads would recurse to a RecursionError.
    Strict: a value must have its documented JSON type (`"seed": false`, `"max_tokens": "5"`
    and `"thinking": 0` are refused, not coerced)."""
    if raw is None:
        return JobCreate()
    try:
        req = JobCreate.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":
            why = errors[0]["msg"].removeprefix("Invalid JSON: ")
            raise InvalidRequest(f"the request is not valid JSON: {why}") from exc
        raise InvalidRequest(describe_validation(errors)) from exc
    return _check_response_format(req)


def _check_response_format(req: JobCreate) -> JobCreate:
    """The response_format's schema compiled, without a tokenizer: tens of µs to, for huge
    schemas, a second — callers keep it off the event loop."""
    problem = grammar_problem(req.response_format.grammar())
    if problem is not None:
        raise InvalidRequest(f"response_format: the schema cannot be compiled: {problem}")
    return req


def check_capacity(
    state: AppState, owner: str, content_length: str | None, multipart: bool
) -> None:
    """Cheap refusals before a byte of the body is read."""
    s = state.settings
    wait = ratelimit.take(state.redis, owner, s.submits_per_minute)
    if wait > 0:
        raise RateLimited(f"more than {s.submits_per_minute} submits a minute", wait)
    if joblist.queue_depth(state.redis) >= s.max_queue_depth:
        raise QueueFull("too many queued jobs; retry later", s.queue_full_retry_after_s)
    if content_length and content_length.isdigit():
        if multipart and int(content_length) > s.max_upload_bytes + MULTIPART_OVERHEAD:
            raise PayloadTooLarge(f"uploads are limited to {s.max_upload_mb} MiB")
        if not multipart and int(content_length) > JSON_BODY_MAX:
            raise PayloadTooLarge(JSON_BODY_TOO_LARGE)


async def receive_upload(
    state: AppState, job_id: str, stream: AsyncIterator[bytes], content_type: str
) -> tuple[JobCreate, str]:
    """Multipart form → (request, sha256 of the file). The file is stored under DATA_DIR."""
    open_sink = lambda: InputSink(state.storage.input_path(job_id), state.settings.max_upload_bytes)
    raw, sink = await read_form(stream, content_type, open_sink)
    if sink is None:
        raise InvalidRequest("the form has no 'file' part")
    req = await run_in_threadpool(parse_request, raw)
    if req.input is not None:
        raise InvalidRequest("input.url belongs in a JSON body, not next to an uploaded file")
    return req, sink.sha256


async def receive_url(state: AppState, job_id: str, stream: AsyncIterator[bytes]) -> JobCreate:
    """JSON body with input.url → request; the URL's content is downloaded under DATA_DIR."""
    req = await run_in_threadpool(parse_request, await read_small_body(stream))
    if req.input is None:
        raise InvalidRequest("a JSON body needs input.url (or upload the file as multipart)")
    s = state.settings
    with InputSink(state.storage.input_path(job_id), s.max_upload_bytes) as sink:
        await fetch_to_sink(
            req.input.url, sink, state.guard, s.url_connect_timeout_s, s.url_fetch_timeout_s
        )
    return req


def media_type_of(state: AppState, job_id: str, req: JobCreate) -> str | None:
    """The declared media type, else the sniffed one (None: a container, for the worker)."""
    path = state.storage.input_path(job_id)
    if path.stat().st_size == 0:
        raise InvalidRequest("the file is empty")
    if req.media_type is not None:
        return req.media_type.value
    limits = MediaLimits(max_file_bytes=state.settings.max_upload_bytes)
    try:
        return sniff(str(path), limits).media_type
    except MediaTooLarge as exc:
        raise PayloadTooLarge(exc.message) from exc
    except MediaError as exc:
        raise UnsupportedMediaType(exc.message) from exc


def check_webhook(state: AppState, req: JobCreate) -> None:
    if req.webhook is not None:
        try:
            state.guard.resolve(req.webhook.url)
        except UrlFetchFailed as exc:
            raise InvalidRequest(f"webhook.url: {exc.detail}") from exc


def fingerprint(req: JobCreate, content_sha: str) -> str:
    canonical = req.model_dump_json(exclude_defaults=False) + content_sha
    return hashlib.sha256(canonical.encode()).hexdigest()


def enqueue(
    state: AppState,
    owner: str,
    job_id: str,
    req: JobCreate,
    media_type: str | None,
    base_url: str,
    idem: tuple[str, str] | None,
) -> tuple[JobRecord, bool]:
    """Create the job, or find the first one of this Idempotency-Key. Returns (job, created)."""
    r, s = state.redis, state.settings
    if idem is not None:
        key, fp = idem
        try:
            first = idempotency.claim(r, owner, key, fp, job_id, s.idempotency_ttl_s)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        if first is not None:
            state.storage.delete(job_id)
            return jobstore.load(r, first), False
    secret = None
    if req.webhook is not None:
        secret = req.webhook.secret or webhooks.default_secret(r, owner, s.webhook_secret)
    rec = JobRecord(
        id=job_id, owner=owner, status=JobStatus.queued, request=req, media_type=media_type,
        input=str(state.storage.input_path(job_id).relative_to(state.storage.root)),
        base_url=base_url, created_at=time.time(), webhook_secret=secret,
        webhook=WebhookState() if req.webhook is not None else None,
        retention_s=s.job_record_ttl_s,
    )  # fmt: skip
    jobstore.create(r, rec, s.job_timeout_s, s.rq_result_ttl_s)
    return rec, True


async def submit(
    state: AppState,
    owner: str,
    stream: AsyncIterator[bytes],
    content_type: str,
    base_url: str,
    idempotency_key: str | None,
) -> tuple[JobRecord, bool]:
    job_id = jobstore.new_job_id()
    stream = idle_timeout(stream, state.settings.upload_idle_timeout_s)
    try:
        if content_type.startswith("multipart/form-data"):
            req, content_sha = await receive_upload(state, job_id, stream, content_type)
        else:
            req, content_sha = await receive_url(state, job_id, stream), ""
        await run_in_threadpool(check_webhook, state, req)
        media_type = await run_in_threadpool(media_type_of, state, job_id, req)
        idem = (idempotency_key, fingerprint(req, content_sha)) if idempotency_key else None
        return await run_in_threadpool(
            enqueue, state, owner, job_id, req, media_type, base_url, idem
        )
    except BaseException:
        state.storage.delete(job_id)
        raise
