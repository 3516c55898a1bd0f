"""Job leases against a real redis-server: priority order, exactly-one holder, sweeps."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from service.schemas import JOB_QUEUES
from workers.leases import LEASES_KEY, LeaseTable, attempts_key, lease_key


@pytest.fixture
def r(redis_client):
    return redis_client


def _queues(r):
    return [Queue(name, connection=r) for name in JOB_QUEUES]


def _push(r, queue: str, *ids: str) -> None:
    r.rpush(Queue(queue, connection=r).key, *ids)


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


def test_only_the_holder_finishes_or_renews(r):
    _push(r, "jobs:normal", "j")
    table = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60)
    lease = table.claim(_queues(r), "mine")
    impostor = type(lease)(lease.job_id, lease.queue, "other", lease.attempts)
    assert table.renew([impostor, lease]) == [False, True]
    assert not table.finish(impostor)
    assert table.holds(lease) and table.finish(lease)
    assert not table.finish(lease), "a lease ends once"
    assert r.zcard(LEASES_KEY) == 0 and not r.exists(lease_key("j"))
    assert not r.exists(attempts_key("j")), "a finished job's attempt count goes too"


def test_expired_lease_is_swept_back_to_the_head_of_its_queue(r):
    _push(r, "jobs:low", "lost", "next")
    dead = LeaseTable(r, "dead", ttl_s=0.2, attempts_ttl_s=60)
    lease = dead.claim(_queues(r), "dead-token")
    live = LeaseTable(r, "live", ttl_s=30, attempts_ttl_s=60)
    assert live.sweep() == [], "not expired yet"
    time.sleep(0.3)
    assert live.expired() == ["lost"]
    assert live.sweep() == ["lost"]
    assert live.sweep() == [], "a second sweep finds nothing: requeued exactly once"
    assert r.lrange(Queue("jobs:low", connection=r).key, 0, -1) == [b"lost", b"next"]
    assert not dead.finish(lease), "the dead worker can no longer finish it"
    again = live.claim(_queues(r), "live-token")
    assert (again.job_id, again.attempts) == ("lost", 2)


def test_requeue_hands_the_job_back(r):
    _push(r, "jobs:high", "a", "b")
    table = LeaseTable(r, "w", ttl_s=30, attempts_ttl_s=60)
    lease = table.claim(_queues(r), "t")
    assert table.requeue(lease)
    assert r.lrange(Queue("jobs:high", connection=r).key, 0, -1) == [b"a", b"b"]
    assert r.zcard(LEASES_KEY) == 0
