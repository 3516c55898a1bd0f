"""MediaBudget: how far decoding may run ahead of the GPU in host bytes."""

from __future__ import annotations

import threading

from workers.media_budget import MediaBudget, shm_budget


def test_first_decodes_then_the_mean_estimate():
    b = MediaBudget(250, first=2)
    assert b.try_start() and b.try_start() and not b.try_start()  # nothing landed: 2 at once
    b.landed(100)  # mean 100: held 100 + 2 in flight · 100 > 250
    assert not b.try_start()
    b.landed(None)  # a failed decode holds nothing and does not move the mean
    assert b.try_start()  # 100 + 1 · 100 <= 250
    b.landed(100)
    assert b.held == 200 and b.peak == 200 and not b.try_start()
    b.release(200)
    assert b.try_start()


def test_a_file_larger_than_the_budget_still_gets_its_turn():
    b = MediaBudget(10, first=4)
    assert b.try_start()
    b.landed(1000)
    assert not b.try_start()
    b.release(1000)
    assert b.try_start()  # nothing held, nothing in flight


def test_start_waits_for_a_release():
    b = MediaBudget(100, first=1)
    b.start()
    b.landed(100)
    started = threading.Event()
    t = threading.Thread(target=lambda: (b.start(), started.set()), daemon=True)
    t.start()
    assert not started.wait(0.2)
    b.release(100)
    assert started.wait(5) and b.in_flight == 1


def test_shm_budget_is_at_most_the_limit():
    assert shm_budget(123) <= 123 and shm_budget() > 0


def test_waiting_decodes_start_in_the_order_they_asked():
    b = MediaBudget(100, first=1)
    b.start()
    b.landed(100)  # the mean is 100: room for one decode at a time
    order: list[int] = []
    threads = []
    for i in range(3):
        t = threading.Thread(target=lambda i=i: (b.start(), order.append(i)), daemon=True)
        t.start()
        threads.append(t)
        while len(b._waiting) < i + 1:  # queued before the next one asks
            t.join(0.001)
    assert not b.try_start(), "nobody jumps the queue"
    b.release(100)
    for i, t in enumerate(threads):
        t.join(5)
        assert order == list(range(i + 1)) and b.in_flight == 1
        b.landed(None)  # that decode failed: room for the next
