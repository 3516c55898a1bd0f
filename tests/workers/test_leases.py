"""Job leases against a real redis-server: priority order, exactly-one holder, sweeps, and the
job record moving with its lease (a record is `running` exactly while a lease on it exists)."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from contract import jobstore
from contract.metrics import METRICS_KEY
from contract.schemas import JOB_QUEUES, JobCreate, JobStatus, cancel_key, job_key
from contract.storage import Storage
from workers.leases import LEASES_KEY, LeaseTable, attempts_key, lease_key


@pytest.fixture
def r(redis_client):
    return redis_client


def _queues(r):
    return [Queue(name, connection=r) for name in JOB_QUEUES]


def _push(r, queue: str, *ids: str, status: str = "queued") -> None:
    """Queue ids with a minimal job record each (the lease scripts read its status)."""
    for job_id in ids:
        r.hset(job_key(job_id), mapping={"status": status, "attempt": ""})
    r.rpush(Queue(queue, connection=r).key, *ids)


def _record(r, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(job_key(job_id)).items()}


def _running_without_lease(r, ids) -> list[str]:
    return [i for i in ids if _record(r, i)["status"] == "running" and not r.exists(lease_key(i))]


def test_claim_takes_high_before_normal_before_low_fifo(r):
    _push(r, "jobs:low", "l1")
    _push(r, "jobs:normal", "n1", "n2")
    _push(r, "jobs:high", "h1")
    table = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60)
    order = [table.claim(_queues(r), f"t{i}") for i in range(5)]
    assert [lease.job_id if lease else None for lease in order] == ["h1", "n1", "n2", "l1", None]
    assert order[0].queue == "jobs:high" and order[3].queue == "jobs:low"
    assert all(lease.attempts == 1 for lease in order[:4])
    assert r.zcard(LEASES_KEY) == 4


def test_claim_marks_the_job_running_and_skips_ended_ones(r):
    _push(r, "jobs:normal", "gone", status="cancelled")
    _push(r, "jobs:normal", "j")
    r.set(cancel_key("j"), "1")
    lease = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60).claim(_queues(r), "tok")
    assert lease.job_id == "j" and lease.cancel_requested
    rec = _record(r, "j")
    assert (rec["status"], rec["attempt"], rec["worker"]) == ("running", "tok", "w")
    assert not r.exists(lease_key("gone")) and r.llen(Queue("jobs:normal", connection=r).key) == 0
    assert _record(r, "gone")["status"] == "cancelled", "an ended job is dropped, not run"
    assert float(r.hget(METRICS_KEY, "jobs_started")) == 1


def test_only_the_holder_renews_or_releases(r):
    _push(r, "jobs:normal", "j")
    table = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60)
    lease = table.claim(_queues(r), "mine")
    impostor = type(lease)(lease.job_id, lease.queue, "other", lease.attempts)
    assert table.renew([impostor, lease]) == [False, True]
    assert not table.release(impostor) and r.exists(lease_key("j"))
    r.hset(job_key("j"), "status", JobStatus.succeeded.value)  # what jobstore.finish does
    assert not table.release(lease), "a finished job does not go back to its queue"
    assert r.zcard(LEASES_KEY) == 0 and not r.exists(lease_key("j"))
    assert not r.exists(attempts_key("j")), "a finished job's attempt count goes too"
    assert r.llen(Queue("jobs:normal", connection=r).key) == 0


def test_expired_lease_requeues_the_job_and_its_record_together(r):
    _push(r, "jobs:low", "lost", "done", "next")
    dead = LeaseTable(r, "dead", ttl_s=0.2, attempts_ttl_s=60)
    lease = dead.claim(_queues(r), "dead-token")
    finished = dead.claim(_queues(r), "dead-token-2")
    r.hset(job_key("done"), "status", "succeeded")  # finished just before its worker died
    live = LeaseTable(r, "live", ttl_s=30, attempts_ttl_s=60)
    assert live.sweep() == [], "not expired yet"
    time.sleep(0.3)
    assert live.sweep() == ["lost"], "the unfinished job only"
    assert live.sweep() == [], "a second sweep finds nothing: requeued exactly once"
    assert r.lrange(Queue("jobs:low", connection=r).key, 0, -1) == [b"lost", b"next"]
    rec = _record(r, "lost")
    assert (rec["status"], rec["attempt"], rec["worker"]) == ("queued", "", "")
    assert _running_without_lease(r, ["lost", "done", "next"]) == []
    assert not dead.release(lease) and not dead.release(finished), "the dead worker lost them"
    again = live.claim(_queues(r), "live-token")
    assert (again.job_id, again.attempts) == ("lost", 2)
    assert float(r.hget(METRICS_KEY, "jobs_started")) == 2, "lost and done, each once"
    assert float(r.hget(METRICS_KEY, "job_attempts")) == 3


def test_release_hands_an_unfinished_job_back(r):
    _push(r, "jobs:high", "a", "b")
    table = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60)
    lease = table.claim(_queues(r), "t")
    assert table.release(lease)
    assert r.lrange(Queue("jobs:high", connection=r).key, 0, -1) == [b"a", b"b"]
    assert r.zcard(LEASES_KEY) == 0 and _record(r, "a")["status"] == "queued"


def test_a_running_record_left_without_a_lease_is_cancellable(r, tmp_path):
    # What the version before attempts were recorded could leave: running, no lease, no
    # attempt; nothing would ever read its cancel flag.
    rec = jobstore.JobRecord(
        id=jobstore.new_job_id(), owner="o", status=JobStatus.queued, request=JobCreate(),
        created_at=time.time(), retention_s=60,
    )  # fmt: skip
    jobstore.create(r, rec, job_timeout_s=60, rq_result_ttl_s=60)
    r.hset(job_key(rec.id), "status", "running")
    ended = jobstore.cancel(r, Storage(tmp_path), jobstore.load(r, rec.id))
    assert ended.status is JobStatus.cancelled and ended.error.code == "cancelled"


def test_a_graceful_hand_back_is_not_an_attempt_a_dead_engines_is(r):
    _push(r, "jobs:normal", "j")
    table = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60)
    for n in range(5):  # five shutdowns in a row: the job is still on its first attempt
        lease = table.claim(_queues(r), f"shutdown-{n}")
        assert lease.attempts == 1
        assert table.release(lease, forgive=True)
        assert _record(r, "j")["status"] == "queued"
    lease = table.claim(_queues(r), "engine-died")
    assert table.release(lease)  # a dead engine may have been this job's doing: it counts
    assert table.claim(_queues(r), "next").attempts == 2
