"""A batch's end: its output and error files written, its terminal status set.

It runs once every fed job has been counted, and either every line was fed (→ `finalizing` →
`completed`) or the batch stopped: cancelled (`cancelling` → `cancelled`) or out of time
(→ `expired`); lines never fed then go to the error file as `batch_cancelled` /
`batch_expired`. The output file holds the succeeded lines, the error file everything else,
in input order, invalid lines first; a file with no line is not created (its id stays null).
The file ids are stored before anything is written, so a runner that dies half-way is
followed by one that writes the same files again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import TextIO

from contract.jobstore import from_hash
from contract.schemas import JobStatus, job_key
from service.batches import filestore, output, store
from service.batches.context import BatchContext
from service.batches.feeder import read_plan
from service.batches.ids import FILE_PREFIX, new_id
from service.batches.models import OUTPUT_PURPOSE, BatchError, BatchStatus
from service.batches.store import BatchRecord, batch_dir, feed_errors_key
from service.batches.validate import INVALID, PlanEntry

CHUNK = 256  # job records read per Redis round trip


def _ending(rec: BatchRecord) -> tuple[BatchStatus, str | None]:
    """The terminal status, and the error code of the lines that never ran."""
    if rec.status is BatchStatus.cancelling:
        return BatchStatus.cancelled, "batch_cancelled"
    if rec.stop == "expire":
        return BatchStatus.expired, "batch_expired"
    return BatchStatus.completed, None


def finalize(ctx: BatchContext, rec: BatchRecord) -> None:
    r, now = ctx.redis, int(time.time())
    final, stop_code = _ending(rec)
    completing = final is BatchStatus.completed and rec.status is BatchStatus.in_progress
    if completing and not store.transition(
        r, rec.id, (BatchStatus.in_progress,), status=BatchStatus.finalizing, finalizing_at=now
    ):
        return  # cancelled meanwhile: the next step ends it that way
    if not rec.draft_output_id:
        rec.draft_output_id, rec.draft_error_id = new_id(FILE_PREFIX), new_id(FILE_PREFIX)
        store.set_fields(
            r, rec.id, draft_output_id=rec.draft_output_id, draft_error_id=rec.draft_error_id
        )
    root = ctx.storage.root
    targets = {"output": rec.draft_output_id, "error": rec.draft_error_id}
    paths = {kind: filestore.content_path(root, fid) for kind, fid in targets.items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = {kind: path.with_name("content.part") for kind, path in paths.items()}
    with open(tmp["output"], "w") as out, open(tmp["error"], "w") as err:
        written = _write(ctx, rec, stop_code, out, err)
    published = {}
    for kind, count in written.items():
        if count == 0:
            shutil.rmtree(paths[kind].parent, ignore_errors=True)
            continue
        os.replace(tmp[kind], paths[kind])
        filestore.create(r, filestore.new_record(
            targets[kind], rec.owner, OUTPUT_PURPOSE, f"{rec.id}_{kind}.jsonl",
            paths[kind].stat().st_size, ctx.settings.file_ttl_s,
        ))  # fmt: skip
        published[f"{kind}_file_id"] = targets[kind]
    allowed = (BatchStatus.finalizing, BatchStatus.cancelling, BatchStatus.in_progress,
               BatchStatus.validating)  # fmt: skip
    store.transition(r, rec.id, allowed, status=final, **{f"{final.value}_at": now}, **published)
    end(ctx, rec.id)


def end(ctx: BatchContext, batch_id: str) -> None:
    """The batch no longer runs: drop its working state, keep its record for `file_ttl_s`."""
    store.retire(ctx.redis, batch_id, ctx.settings.file_ttl_s)
    shutil.rmtree(batch_dir(ctx.storage.root, batch_id), ignore_errors=True)


def _write(
    ctx: BatchContext, rec: BatchRecord, stop_code: str | None, out: TextIO, err: TextIO
) -> dict[str, int]:
    counts = {"output": 0, "error": 0}

    def put(kind: str, line: dict) -> None:
        (out if kind == "output" else err).write(json.dumps(line) + "\n")
        counts[kind] += 1

    invalid = batch_dir(ctx.storage.root, rec.id) / INVALID
    if invalid.exists():
        with invalid.open() as f:
            for text in f:
                put("error", json.loads(text))
    raw_errors = ctx.redis.hgetall(feed_errors_key(rec.id))
    feed_errors = {k.decode(): BatchError.model_validate_json(v) for k, v in raw_errors.items()}
    chunk: list[PlanEntry] = []
    for index, (entry, _) in enumerate(read_plan(ctx, rec.id)):
        if index >= rec.fed:  # never fed: the fed lines before it go first, in input order
            _write_jobs(ctx, chunk, feed_errors, stop_code, put)
            chunk = []
            put("error", output.stopped_line(entry.custom_id, stop_code, entry.job_id))
            continue
        chunk.append(entry)
        if len(chunk) == CHUNK:
            _write_jobs(ctx, chunk, feed_errors, stop_code, put)
            chunk = []
    _write_jobs(ctx, chunk, feed_errors, stop_code, put)
    return counts


def _write_jobs(ctx, entries: list[PlanEntry], feed_errors, stop_code, put) -> None:
    if not entries:
        return
    pipe = ctx.redis.pipeline(transaction=False)
    for entry in entries:
        pipe.hgetall(job_key(entry.job_id))
    for entry, raw in zip(entries, pipe.execute(), strict=True):
        cid, job_id = entry.custom_id, entry.job_id
        if job_id in feed_errors:
            e = feed_errors[job_id]
            put("error", output.error_line(cid, e.code, e.message, job_id))
            continue
        if not raw:
            put("error", output.error_line(cid, "not_found", "the line's job was deleted", job_id))
            continue
        job = from_hash(raw)
        done = job.status is JobStatus.succeeded and job.result
        result = ctx.storage.read_result(job.result) if done else None
        if result is not None:
            put("output", output.success_line(cid, job, result))
        elif job.status is JobStatus.cancelled and stop_code is not None:
            put("error", output.stopped_line(cid, stop_code, job_id))
        elif job.status is JobStatus.cancelled:  # by its owner, through /v1/jobs
            message = "the line's job was cancelled"
            put("error", output.error_line(cid, "cancelled", message, job_id))
        else:
            put("error", output.failure_line(cid, job))
