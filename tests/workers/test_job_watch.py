"""The worker's JobWatch against a real redis-server: the media type the pipeline found on
opening a container reaches the job record with the progress (no round trip of its own), and
the finish transaction records it for a job that ended before the next tick."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from contract import jobstore
from contract.schemas import JobCreate, JobStatus, job_key
from contract.storage import Storage
from workers.job_watch import JobWatch
from workers.leases import LeaseTable
from workers.tasks import Attempt


@pytest.fixture
def r(redis_client):
    return redis_client


def _running(r) -> Attempt:
    """A queued container job (media_type None, as the gateway leaves it) taken by a worker."""
    rec = jobstore.JobRecord(
        id=jobstore.new_job_id(), owner="o", status=JobStatus.queued, request=JobCreate(),
        created_at=time.time(), retention_s=60,
    )  # fmt: skip
    jobstore.create(r, rec, job_timeout_s=60, rq_result_ttl_s=60)
    queue = Queue(rec.priority.queue, connection=r)
    lease = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60).claim([queue], f"w:{rec.id}")
    assert lease is not None and lease.job_id == rec.id
    return Attempt(lease=lease, deadline=None)


def test_the_media_type_is_written_with_the_progress_once_known(r):
    attempt = _running(r)
    job_id = attempt.lease.job_id
    watch = JobWatch(r, lambda: [attempt])
    attempt.progress = ("decoding", 0, 1)
    watch.tick()
    rec = jobstore.load(r, job_id)
    assert rec.progress.stage == "decoding" and rec.media_type is None
    attempt.media_type = "video"  # the progress has not changed: the media type alone is news
    watch.tick()
    assert jobstore.load(r, job_id).media_type == "video"
    r.hset(job_key(job_id), "media_type", "")
    watch.tick()  # nothing changed since the last write: nothing is written again
    assert jobstore.load(r, job_id).media_type is None


def test_the_finish_transaction_records_the_media_type(r, tmp_path):
    attempt = _running(r)
    job_id = attempt.lease.job_id
    assert jobstore.finish(
        r, Storage(tmp_path), job_id, JobStatus.succeeded, attempt=attempt.lease.token,
        media_type="audio",
    )  # fmt: skip
    rec = jobstore.load(r, job_id)
    assert rec.status is JobStatus.succeeded and rec.media_type == "audio"
