"""Plan lines → jobs, a window at a time, and the batch's jobs counted as they end.

At most `batch_max_queued` of one batch's jobs wait in the queue at once (running jobs do not
count: a worker holds as many as it can batch), and the feeder stops while the queues hold
half of the gateway's `max_queue_depth`: the other half stays free for interactive submits,
which would otherwise meet `queue_full`. Each fed line is
entered in the batch's in-flight hash before its job is created and the cursor (`fed`,
`fed_offset`) moves after it, so a runner that dies anywhere in between leaves a state the
next one finishes: a job that exists is not created again, a line is counted once
(store.count_job / count_feed_error).

URL media is downloaded here, behind the SSRF guard and the upload cap, a few at a time;
a line whose download or sniffing fails ends as an error-file line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from contract import jobstore
from contract.jobstore import JobRecord
from contract.schemas import JobStatus, Usage, job_key
from media.errors import MediaError
from media.limits import MediaLimits
from media.sniff import sniff
from service import joblist
from service.batches import store
from service.batches.context import BatchContext
from service.batches.models import BatchError
from service.batches.store import BatchRecord, batch_dir, feed_errors_key, inflight_key
from service.batches.validate import PLAN, PlanEntry
from service.errors import OmnibatchError
from service.fetch import fetch_to_sink
from service.input_sink import InputSink

FETCH_CONCURRENCY = 8


def harvest(ctx: BatchContext, rec: BatchRecord) -> int:
    """Count the batch's jobs that ended; returns how many of its jobs wait in the queue."""
    r = ctx.redis
    inflight = [(k.decode(), int(v)) for k, v in r.hgetall(inflight_key(rec.id)).items()]
    pipe = r.pipeline(transaction=False)
    for job_id, _ in inflight:
        pipe.hmget(job_key(job_id), "status", "usage")
    queued = 0
    for (job_id, index), (status, usage) in zip(inflight, pipe.execute(), strict=True):
        if status is None:
            if index < rec.fed:  # created, then deleted by its owner
                store.count_job(r, rec.id, job_id, False, (0, 0))
            continue  # the line at the cursor: a runner died before creating its job
        status = JobStatus(status.decode())
        if status is JobStatus.queued:
            queued += 1
        elif status.terminal:
            u = Usage.model_validate_json(usage) if usage else Usage()
            ok = status is JobStatus.succeeded
            store.count_job(r, rec.id, job_id, ok, (u.input_tokens, u.output_tokens))
    return queued


def stop_jobs(ctx: BatchContext, rec: BatchRecord) -> None:
    """Cancel the batch's unfinished jobs: queued ones now, running ones at a safe point."""
    for raw in ctx.redis.hkeys(inflight_key(rec.id)):
        job = jobstore.load(ctx.redis, raw.decode())
        if job is not None and not job.status.terminal:
            jobstore.cancel(ctx.redis, ctx.storage, job)


def read_plan(ctx: BatchContext, batch_id: str, offset: int = 0) -> Iterator[tuple[PlanEntry, int]]:
    """The plan's entries from byte `offset` on, each with the offset of the next."""
    path = batch_dir(ctx.storage.root, batch_id) / PLAN
    if not path.exists():  # the batch stopped before its validation
        return
    with path.open("rb") as f:
        f.seek(offset)
        while raw := f.readline():
            yield PlanEntry.model_validate_json(raw), f.tell()


def feed(ctx: BatchContext, rec: BatchRecord, queued: int) -> int:
    """Top the batch's queued jobs up to the window; returns how many lines were fed."""
    s = ctx.settings
    room = min(
        s.batch_max_queued - queued,
        s.max_queue_depth // 2 - joblist.queue_depth(ctx.redis),
        rec.valid - rec.fed,
    )
    if room <= 0:
        return 0
    entries = []
    for item in read_plan(ctx, rec.id, rec.fed_offset):
        entries.append(item)
        if len(entries) == room:
            break
    downloads = [e for e, _ in entries if e.url and not ctx.redis.exists(job_key(e.job_id))]
    failed = asyncio.run(_download(ctx, downloads)) if downloads else {}
    for index, (entry, end) in enumerate(entries, start=rec.fed):
        _feed_line(ctx, rec, index, entry, failed.get(entry.job_id))
        store.set_fields(ctx.redis, rec.id, fed=index + 1, fed_offset=end)
    return len(entries)


def _feed_line(
    ctx: BatchContext, rec: BatchRecord, index: int, entry: PlanEntry, error: BatchError | None
) -> None:
    r, storage = ctx.redis, ctx.storage
    if r.exists(job_key(entry.job_id)) or r.hexists(feed_errors_key(rec.id), entry.job_id):
        return  # fed before a runner died
    source, media_type = entry.input, entry.media_type
    if entry.url is not None and error is None:
        path = storage.input_path(entry.job_id)
        source = str(path.relative_to(storage.root))
        try:
            limits = MediaLimits(max_file_bytes=ctx.settings.max_upload_bytes)
            media_type = sniff(str(path), limits).media_type
        except MediaError as exc:
            error = BatchError(code=exc.code, message=exc.message)
    if error is not None:
        storage.delete_input(entry.job_id)
        store.count_feed_error(r, rec.id, entry.job_id, error)
        return
    r.hset(inflight_key(rec.id), entry.job_id, index)
    job = JobRecord(
        id=entry.job_id, owner=rec.owner, status=JobStatus.queued, request=entry.request,
        media_type=media_type, input=source, created_at=time.time(),
        retention_s=ctx.settings.job_record_ttl_s,
    )  # fmt: skip
    jobstore.create(r, job, ctx.settings.job_timeout_s, ctx.settings.rq_result_ttl_s)


async def _download(ctx: BatchContext, entries: list[PlanEntry]) -> dict[str, BatchError]:
    """Fetch each entry's URL into its job's input; returns the failures by job id."""
    s, gate = ctx.settings, asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(entry: PlanEntry) -> tuple[str, BatchError | None]:
        async with gate:
            try:
                with InputSink(ctx.storage.input_path(entry.job_id), s.max_upload_bytes) as sink:
                    await fetch_to_sink(
                        entry.url, sink, ctx.guard, s.url_connect_timeout_s, s.url_fetch_timeout_s
                    )
            except OmnibatchError as exc:
                return entry.job_id, BatchError(code=exc.code, message=exc.detail)
        return entry.job_id, None

    results = await asyncio.gather(*(one(e) for e in entries))
    return {job_id: err for job_id, err in results if err is not None}
