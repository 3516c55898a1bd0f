"""Files of the Files API: uploads (`batch` input files, `user_data` media a line can name by
`file_id`) and a batch's output and error files.

A file is immutable: its record is one JSON string in Redis that expires with the file, its
bytes live under DATA_DIR at `files/{file_id}/content`. The housekeeping `sweep` removes the
bytes and the index entries of expired files; paths are built from checked ids only.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis
from pydantic import BaseModel

from contract.retention import sweep_due
from contract.schemas import KEY_PREFIX
from service.batches.ids import FILE_ID_RE
from service.batches.models import FileObject
from service.batches.paging import page
from service.input_sink import InputSink

EXPIRY_KEY = f"{KEY_PREFIX}files:expiry"


class FileRecord(BaseModel):
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int

    def public(self) -> FileObject:
        return FileObject.model_validate(self.model_dump(exclude={"owner"}))


def file_key(file_id: str) -> str:
    return f"{KEY_PREFIX}file:{file_id}"


def owner_files_key(owner: str) -> str:
    return f"{KEY_PREFIX}owner:{owner}:files"


def content_path(root: Path, file_id: str) -> Path:
    if not FILE_ID_RE.match(file_id):
        raise ValueError("malformed file id")
    return root / "files" / file_id / "content"


def open_content(root: Path, file_id: str, max_bytes: int) -> InputSink:
    """A sink that streams an upload into the file's place, enforcing `max_bytes`."""
    return InputSink(content_path(root, file_id), max_bytes)


def new_record(
    file_id: str, owner: str, purpose: str, filename: str, size: int, ttl_s: int
) -> FileRecord:
    now = int(time.time())
    return FileRecord(
        id=file_id, owner=owner, purpose=purpose, filename=filename[:255], bytes=size,
        created_at=now, expires_at=now + ttl_s,
    )  # fmt: skip


def create(r: redis.Redis, rec: FileRecord) -> None:
    pipe = r.pipeline()
    pipe.set(file_key(rec.id), rec.model_dump_json(), exat=rec.expires_at)
    pipe.zadd(owner_files_key(rec.owner), {rec.id: 0})
    pipe.zadd(EXPIRY_KEY, {f"{rec.owner} {rec.id}": rec.expires_at})
    pipe.execute()


def load(r: redis.Redis, file_id: str) -> FileRecord | None:
    if not FILE_ID_RE.match(file_id):
        return None
    raw = r.get(file_key(file_id))
    return FileRecord.model_validate_json(raw) if raw else None


def load_many(r: redis.Redis, file_ids: list[str]) -> list[FileRecord | None]:
    raws = r.mget([file_key(f) for f in file_ids]) if file_ids else []
    return [FileRecord.model_validate_json(raw) if raw else None for raw in raws]


def list_files(
    r: redis.Redis, owner: str, purpose: str | None, after: str | None, limit: int, desc: bool
) -> tuple[list[FileRecord], bool]:
    keep = (lambda rec: rec.purpose == purpose) if purpose else (lambda _rec: True)
    return page(
        r, owner_files_key(owner), after, limit, lambda ids: load_many(r, ids), desc=desc, keep=keep
    )


def delete(r: redis.Redis, root: Path, rec: FileRecord) -> None:
    pipe = r.pipeline()
    pipe.delete(file_key(rec.id))
    pipe.zrem(owner_files_key(rec.owner), rec.id)
    pipe.zrem(EXPIRY_KEY, f"{rec.owner} {rec.id}")
    pipe.execute()
    shutil.rmtree(content_path(root, rec.id).parent, ignore_errors=True)


def sweep(r: redis.Redis, root: Path, now: float | None = None) -> list[str]:
    """Remove every file whose time has passed (Redis has expired its record already, or
    will); returns their ids."""

    def remove(pipe: redis.client.Pipeline, owner: str, file_id: str) -> None:
        pipe.delete(file_key(file_id))
        pipe.zrem(owner_files_key(owner), file_id)
        shutil.rmtree(content_path(root, file_id).parent, ignore_errors=True)

    return sweep_due(r, EXPIRY_KEY, now, remove)
