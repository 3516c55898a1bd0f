"""A batch's input file, checked whole before anything runs (the batch is `validating`).

Each line is parsed (lines.py) and its `custom_id` checked against the earlier lines'. Media
that needs no download is made local and sniffed now: a data URL is decoded to
`batches/{id}/media/{line}/input` (capped at the upload limit), an uploaded file is used
where it lies. A line that passes becomes one line of the plan, with the job id it will run
as (minted now, so that a line fed twice after a crash is created once); one that fails
becomes an error-file line. An http(s) URL is only checked for its shape here: it is fetched,
behind the SSRF guard, when its line is fed. The file is read a line at a time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import redis
from pydantic import BaseModel

from contract import jobstore
from contract.schemas import JobCreate
from contract.settings import GatewaySettings
from media.errors import MediaError
from media.limits import MediaLimits
from media.sniff import sniff
from service.batches import filestore, output
from service.batches.lines import LineError, MediaRef, convert, parse_line
from service.batches.models import BatchError
from service.batches.store import BatchRecord, batch_dir

MAX_LISTED = 100  # line errors kept on a batch that fails validation
RENEW_EVERY = 500  # lines between renewals of the runner's hold on the batch
PLAN, INVALID = "plan.jsonl", "invalid.jsonl"


class PlanEntry(BaseModel):
    """One valid line: the job it becomes and where that job's input is."""

    line: int  # 1-based line of the input file
    custom_id: str
    job_id: str
    request: JobCreate
    input: str | None = None  # path under DATA_DIR of media already local
    media_type: str | None = None  # sniffed, with `input` (None: a container)
    url: str | None = None  # media to download when the line is fed


@dataclass
class Outcome:
    total: int = 0  # requests (non-blank lines)
    valid: int = 0
    errors: list[BatchError] = field(default_factory=list)  # the first MAX_LISTED line errors
    model: str | None = None  # the first valid line's `model`
    file_error: BatchError | None = None  # the file as a whole is unusable: the batch fails

    @property
    def invalid(self) -> int:
        return self.total - self.valid


def read_lines(f: BinaryIO, cap: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, the line) for each line; None for a line longer than `cap`,
    which is skipped without being held in memory."""
    n = 0
    while raw := f.readline(cap + 1):
        n += 1
        if len(raw) > cap and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield n, None
        else:
            yield n, raw


class _Checker:
    def __init__(self, r: redis.Redis, root: Path, settings: GatewaySettings, rec: BatchRecord):
        self.r, self.root, self.settings, self.rec = r, root, settings, rec
        self.dir = batch_dir(root, rec.id)
        self.limits = MediaLimits(max_file_bytes=settings.max_upload_bytes)
        self.seen: dict[str, int] = {}  # custom_id → line
        self.files: dict[str, tuple[str, str]] = {}  # file_id → (path, media type)

    def check(self, n: int, raw: bytes | None) -> tuple[PlanEntry, str | None]:
        """A line → (its plan entry, the body's model). Raises LineError (with `custom_id`
        when the line got that far)."""
        if raw is None:
            mib = self.settings.batch_max_line_mb
            raise LineError("line_too_large", f"the line is longer than {mib} MiB")
        custom_id = None
        try:
            custom_id, body = parse_line(raw, self.rec.endpoint)
            if custom_id in self.seen:
                raise LineError(
                    "duplicate_custom_id",
                    f"custom_id {custom_id!r} is already used on line {self.seen[custom_id]}",
                    "custom_id",
                )
            self.seen[custom_id] = n
            job = convert(body, {"batch_id": self.rec.id, "custom_id": custom_id})
            entry = PlanEntry(
                line=n, custom_id=custom_id, job_id=jobstore.new_job_id(), request=job.request
            )
            self._place(n, job.media, entry)
            return entry, job.model
        except LineError as exc:
            exc.custom_id = custom_id
            raise

    def _place(self, n: int, media: MediaRef, entry: PlanEntry) -> None:
        if media.url is not None:
            entry.url = media.url
            return
        if media.data is not None:
            if len(media.data) > self.settings.max_upload_bytes:
                mib = self.settings.max_upload_mb
                raise LineError("invalid_media", f"the media is larger than {mib} MiB")
            path = self.dir / "media" / str(n) / "input"
            path.parent.mkdir(parents=True)
            path.write_bytes(media.data)
            entry.input, entry.media_type = self._relative(path), self._sniff(path)
            return
        if media.file_id not in self.files:
            rec = filestore.load(self.r, media.file_id)
            if rec is None or rec.owner != self.rec.owner or rec.purpose == "batch_output":
                raise LineError("invalid_media", f"no uploaded file {media.file_id}")
            path = filestore.content_path(self.root, rec.id)
            self.files[media.file_id] = (self._relative(path), self._sniff(path))
        entry.input, entry.media_type = self.files[media.file_id]

    def _sniff(self, path: Path) -> str | None:
        try:
            return sniff(str(path), self.limits).media_type
        except MediaError as exc:
            raise LineError("invalid_media", exc.message) from exc

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def validate(
    r: redis.Redis,
    root: Path,
    settings: GatewaySettings,
    rec: BatchRecord,
    renew: Callable[[], None],
) -> Outcome:
    """Write the batch's plan and its invalid lines under `batches/{id}/`; a retry (after a
    runner died mid-way) starts over."""
    out = Outcome()
    src = filestore.content_path(root, rec.input_file_id)
    checker = _Checker(r, root, settings, rec)
    shutil.rmtree(checker.dir, ignore_errors=True)
    checker.dir.mkdir(parents=True)
    if not src.exists():
        out.file_error = BatchError(code="file_not_found", message="the input file is gone")
        return out
    cap = settings.batch_max_line_mb << 20
    with src.open("rb") as f, open(checker.dir / PLAN, "w") as plan, open(
        checker.dir / INVALID, "w"
    ) as invalid:
        for n, raw in read_lines(f, cap):
            if raw is not None and not raw.strip():
                continue
            out.total += 1
            if out.total > settings.batch_max_lines:
                out.file_error = BatchError(
                    code="too_many_lines",
                    message=f"the file has more than {settings.batch_max_lines} requests",
                )
                return out
            if out.total % RENEW_EVERY == 0:
                renew()
            try:
                entry, model = checker.check(n, raw)
            except LineError as exc:
                message = f"line {n}: {exc.message}"
                line = output.error_line(exc.custom_id, exc.code, message)
                invalid.write(json.dumps(line) + "\n")
                if len(out.errors) < MAX_LISTED:
                    out.errors.append(
                        BatchError(code=exc.code, message=message, param=exc.param, line=n)
                    )
                continue
            out.valid += 1
            out.model = out.model or model
            plan.write(entry.model_dump_json() + "\n")
    if out.total == 0:
        out.file_error = BatchError(code="empty_file", message="the input file has no requests")
    return out
