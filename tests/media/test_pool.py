"""Through the process pool: bad files fail their own future, hung decodes are killed, the
pool keeps serving, and the good job after them succeeds."""

from __future__ import annotations

import os
import time

import pytest
import torch

from media.errors import MediaError
from media.items import frame_buffers
from media.options import MediaOptions
from media.pipeline import process
from media.pool import MediaPool, run_all
from tests.media.bad_corpus import build, good_image
from tests.media.corpus import write_video


@pytest.fixture(scope="module")
def pool():
    with MediaPool(workers=2) as p:
        yield p


def test_bad_corpus_then_good_job(pool, tmp_path):
    corpus = build(str(tmp_path))
    jobs = [(path, MediaOptions()) for path, _ in corpus.values()] + [
        (good_image(str(tmp_path)), MediaOptions())
    ]
    t = time.monotonic()
    results = run_all(pool, jobs)
    assert time.monotonic() - t < 60
    for (name, (_, code)), res in zip(corpus.items(), results, strict=False):
        assert isinstance(res, MediaError) and res.code == code, name
    (item,) = results[-1]
    assert item.grid[0] * item.grid[1] >= 1024


def test_deadline_kills_the_worker_and_the_pool_recovers(pool, tmp_path):
    video = write_video(str(tmp_path / "v.mp4"), frames=40, fps=10)
    slow = pool.submit(video, MediaOptions(fps=10), timeout=0.001)
    with pytest.raises(MediaError) as err:
        slow.result(timeout=60)
    assert err.value.code == "timeout"
    futures = [pool.submit(video, MediaOptions(fps=2, use_audio=False)) for _ in range(3)]
    for f in futures:
        (item,) = f.result(timeout=120)
        assert len(item.timestamps) == 8


def test_results_come_back_in_shared_memory(pool, tmp_path):
    video = write_video(str(tmp_path / "v.mp4"), frames=4, fps=10)
    (item,) = pool.submit(video, MediaOptions(fps=10, use_audio=False)).result(timeout=120)
    assert item.tubelets.is_shared() and item.tubelets.shape[0] == 2


def _segment(item) -> int:
    """The shared-memory file behind an item's frames (its inode), as this process maps it."""
    fd, _ = item.tubelets.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


def test_recycled_frame_buffers_are_reused_and_hold_the_new_frames(tmp_path):
    short = write_video(str(tmp_path / "short.mp4"), frames=8, fps=10)
    long = write_video(str(tmp_path / "long.mp4"), frames=16, fps=10)
    every, half = (MediaOptions(fps=f, use_audio=False) for f in (10, 5))  # 8 frames of each
    with MediaPool(workers=1) as pool:  # one worker: every buffer is its
        (a,) = pool.submit(short, every).result(timeout=120)
        (b,) = pool.submit(long, half).result(timeout=120)  # `a` is still lent
        assert _segment(b) != _segment(a)
        seg_a = _segment(a)
        pool.recycle(frame_buffers([a]))
        del a
        (c,) = pool.submit(long, half).result(timeout=120)
        assert _segment(c) == seg_a  # written into the returned buffer ...
    (want,) = process(long, half)
    (before,) = process(short, every)
    assert torch.equal(c.tubelets, want.tubelets)  # ... and holding the new frames only
    assert not torch.equal(want.tubelets, before.tubelets)


def test_a_worker_that_died_idle_is_replaced(pool, tmp_path):
    video = write_video(str(tmp_path / "v.mp4"), frames=4, fps=10)
    for w in pool._workers:  # simulate crashes between jobs
        w.proc.kill()
        w.proc.join()
    futures = [pool.submit(video, MediaOptions(fps=10, use_audio=False)) for _ in range(2)]
    assert all(len(f.result(timeout=120)[0].timestamps) == 4 for f in futures)


def test_workers_run_at_the_niceness_given():
    want = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    with MediaPool(workers=2, niceness=7) as pool:
        deadline = time.monotonic() + 60  # each spawned worker lowers its own on start
        while True:
            nice = [os.getpriority(os.PRIO_PROCESS, w.proc.pid) for w in pool._workers]
            if nice == [want] * len(nice) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert nice == [want] * len(nice)
