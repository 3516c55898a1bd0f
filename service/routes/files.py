"""`/v1/files`: OpenAI's Files API. Uploads are streamed to DATA_DIR under a cap that depends
on the purpose (`batch` input files, `user_data` media that batch lines name by `file_id`);
a batch's output and error files are read here too (purpose `batch_output`)."""

from __future__ import annotations

import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from contract.schemas import Problem
from service import ratelimit
from service.batches import filestore
from service.batches.filestore import FileRecord
from service.batches.ids import FILE_ID_RE, FILE_PREFIX, new_id
from service.batches.models import UPLOAD_PURPOSES, FileDeleted, FileList, FileObject
from service.deps import AppState, Owner, State
from service.errors import (
    PROBLEM_JSON,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
)
from service.submit import MULTIPART_OVERHEAD
from service.upload import Form, idle_timeout, read_form_parts

router = APIRouter(prefix="/v1", tags=["files"])
_ERRORS = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (400, 401, 404, 413, 415)
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                    },
                }
            }
        },
    }
}


async def get_file(
    file_id: Annotated[str, Path(description="a file id, `file-…`")], owner: Owner, state: State
) -> FileRecord:
    """The caller's file; another key's file is indistinguishable from a missing one."""
    rec = await run_in_threadpool(filestore.load, state.redis, file_id)
    if rec is None or rec.owner != owner:
        raise NotFound(f"no file {file_id}" if FILE_ID_RE.match(file_id) else "no such file")
    return rec


OwnedFile = Annotated[FileRecord, Depends(get_file)]


def _caps(state: AppState) -> dict[str, int]:
    s = state.settings
    return {"batch": s.batch_max_file_mb << 20, "user_data": s.max_upload_bytes}


def _admit(state: AppState, owner: str, content_length: str | None) -> None:
    s = state.settings
    wait = ratelimit.take(state.redis, owner, s.submits_per_minute)
    if wait > 0:
        raise RateLimited(f"more than {s.submits_per_minute} submits a minute", wait)
    cap = max(_caps(state).values())
    declared = int(content_length) if content_length and content_length.isdigit() else 0
    if declared > cap + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"files are limited to {cap >> 20} MiB")


def _register(state: AppState, owner: str, file_id: str, form: Form) -> FileRecord:
    purpose = form.values.get("purpose", b"").decode("utf-8", "replace")
    if purpose not in UPLOAD_PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}")
    sink = form.sink
    if sink is None:
        raise BadRequest("the form has no 'file' part")
    if sink.size == 0:
        raise BadRequest("the file is empty")
    cap = _caps(state)[purpose]
    if sink.size > cap:  # the purpose came after the file, which was held to the larger cap
        raise PayloadTooLarge(f"a {purpose} file is limited to {cap >> 20} MiB")
    if purpose == "batch" and not sink.head.lstrip().startswith(b"{"):
        raise BadRequest("a batch file is JSONL: one JSON request object a line")
    rec = filestore.new_record(
        file_id, owner, purpose, form.filename or "upload", sink.size, state.settings.file_ttl_s
    )
    filestore.create(state.redis, rec)
    return rec


@router.post("/files", response_model=FileObject, responses=_ERRORS, openapi_extra=_UPLOAD_BODY)
async def upload_file(request: Request, state: State, owner: Owner) -> FileObject:
    """Upload a file (multipart `file` + `purpose`): a batch's JSONL input (`batch`), or media
    that batch lines name by `file_id` (`user_data`)."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType("send multipart/form-data with the parts 'file' and 'purpose'")
    await run_in_threadpool(_admit, state, owner, request.headers.get("content-length"))
    caps, root, file_id = _caps(state), state.storage.root, new_id(FILE_PREFIX)

    def open_sink(values: dict[str, bytes]):
        purpose = values.get("purpose", b"").decode("utf-8", "replace")
        return filestore.open_content(root, file_id, caps.get(purpose, max(caps.values())))

    try:
        stream = idle_timeout(request.stream(), state.settings.upload_idle_timeout_s)
        form = await read_form_parts(stream, content_type, open_sink, ("purpose",))
        rec = await run_in_threadpool(_register, state, owner, file_id, form)
    except BaseException:
        shutil.rmtree(filestore.content_path(root, file_id).parent, ignore_errors=True)
        raise
    return rec.public()


@router.get("/files", response_model=FileList, responses=_ERRORS)
async def list_files(
    state: State,
    owner: Owner,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """The caller's files by creation time; pass the last id back as `after` for the next page."""
    if after is not None and not FILE_ID_RE.match(after):
        raise BadRequest("malformed 'after' cursor")
    page, more = await run_in_threadpool(
        filestore.list_files, state.redis, owner, purpose, after, limit, order == "desc"
    )
    data = [rec.public() for rec in page]
    return FileList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
        has_more=more,
    )  # fmt: skip


@router.get("/files/{file_id}", response_model=FileObject, responses=_ERRORS)
async def get_file_object(file: OwnedFile) -> FileObject:
    return file.public()


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS},
)
async def get_file_content(state: State, file: OwnedFile) -> FileResponse:
    """The file's bytes; a batch's output and error files are JSONL."""
    path = filestore.content_path(state.storage.root, file.id)
    if not path.exists():
        raise NotFound(f"no file {file.id}")
    jsonl = file.purpose in ("batch", "batch_output")
    media_type = "application/jsonl" if jsonl else "application/octet-stream"
    return FileResponse(path, media_type=media_type)


@router.delete("/files/{file_id}", response_model=FileDeleted, responses=_ERRORS)
async def delete_file(state: State, file: OwnedFile) -> FileDeleted:
    await run_in_threadpool(filestore.delete, state.redis, state.storage.root, file)
    return FileDeleted(id=file.id)
