"""A process pool that decodes and preprocesses media ahead of the GPU.

Each worker is a spawned process (the GPU worker has CUDA up, so nothing is forked) with its
own pipe. A dispatcher thread hands one job at a time to each idle worker and watches the
deadline of every running job: a job that overruns gets its worker killed and replaced, and
a worker that dies (a crashing decoder) is replaced too. Either way only that job's future
fails; the pool keeps serving. Tensors travel through shared memory (torch's reducers).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory tensor reducers)

from media.errors import MediaError, MediaTimeout, MediaUnreadable
from media.frame_buffers import BufferId, FrameBuffers, keep_bytes
from media.items import MediaItem
from media.limits import DEFAULT_LIMITS, MediaLimits
from media.options import DEFAULT_OPTIONS, MediaOptions
from media.pipeline import process
from media.video_decode import DEFAULT_DECODE, DecodeConfig


def decode_job(
    path: str, opts: MediaOptions, limits: MediaLimits, cfg: DecodeConfig, shared: FrameBuffers
) -> list[MediaItem]:
    """What a pool worker does with one file (a subclass's worker may do more)."""
    return process(path, opts, limits, cfg, shared)


def _serve(
    conn: Connection,
    limits: MediaLimits,
    cfg: DecodeConfig,
    owner: int,
    job: Callable,
    keep: int,
    niceness: int,
) -> None:
    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism
    os.nice(niceness)
    # results leave this process: frames go to shared memory, `keep` bytes of it kept free
    shared = FrameBuffers(owner, keep_bytes=keep)
    # The GPU worker may leave without closing the pool (it exits with os._exit): the pipe
    # breaks, and this process ends quietly with it.
    with contextlib.suppress(EOFError, BrokenPipeError):
        while (msg := conn.recv()) is not None:
            if msg[0] == "recycle":
                shared.returned(msg[1])
                continue
            _, path, opts = msg
            try:
                result = (True, job(path, opts, limits, cfg, shared))
            except MediaError as e:
                result = (False, e)
            except Exception:  # the job boundary: a bug fails this job, never the worker
                result = (False, MediaUnreadable("the media could not be processed"))
            conn.send(result)
            shared.sent() if result[0] else shared.failed()


@dataclass
class _Worker:
    proc: mp.Process
    conn: Connection
    owner: int  # the number its frame buffers carry (BufferId); a replacement gets a new one
    job: tuple | None = None  # (future, deadline) while busy


@dataclass
class _Job:
    path: str
    opts: MediaOptions
    timeout: float
    future: Future = field(default_factory=Future)


class MediaPool:
    """`submit(path, options)` -> Future of that file's items; nproc spawned workers by default.

    A video's frames arrive in the worker's shared-memory buffers: `recycle` them once
    nothing reads them any more, and that worker writes its next frames there.
    """

    job = staticmethod(decode_job)

    def __init__(
        self,
        workers: int | None = None,
        limits: MediaLimits = DEFAULT_LIMITS,
        cfg: DecodeConfig = DEFAULT_DECODE,
        niceness: int = 0,
    ):
        """`niceness`: added to each worker process's (Linux caps the sum at 19)."""
        self.limits, self.cfg, self.niceness = limits, cfg, niceness
        self._ctx = mp.get_context("spawn")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._wake_lock = threading.Lock()  # submit() may be called from several threads
        self._recycled: queue.SimpleQueue[list[BufferId]] = queue.SimpleQueue()
        self.handed_back = 0  # buffers sent back to the worker that lent them (tests read it)
        self._owners = itertools.count()
        workers = workers or os.cpu_count() or 1
        self._keep = keep_bytes(workers)
        self._workers = [self._spawn() for _ in range(workers)]
        self._closed = False
        self._thread = threading.Thread(target=self._dispatch, name="media-pool", daemon=True)
        self._thread.start()

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def submit(
        self, path: str, opts: MediaOptions = DEFAULT_OPTIONS, timeout: float | None = None
    ) -> Future:
        """Future of list[MediaItem]; fails with a MediaError (MediaTimeout past `timeout` s)."""
        if self._closed:
            raise RuntimeError("the media pool is closed")
        job = _Job(path, opts, timeout or self.limits.decode_timeout_s)
        self._jobs.put(job)
        self._wake()
        return job.future

    def recycle(self, buffers: list[BufferId]) -> None:
        """Hand frame buffers back (`frame_buffers(items)`); the tensors that view them must
        not be read after this call. Those of a worker that has since been replaced are
        dropped."""
        if buffers:
            self._recycled.put(buffers)
            self._wake()

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        self._wake()
        self._thread.join()

    def _wake(self) -> None:
        with self._wake_lock:
            self._wake_w.send_bytes(b"")

    def __enter__(self) -> MediaPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        owner = next(self._owners)
        args = (child, self.limits, self.cfg, owner, self.job, self._keep, self.niceness)
        proc = self._ctx.Process(target=_serve, args=args, daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent, owner)

    def _replace(self, w: _Worker) -> _Worker:
        w.proc.kill()
        w.proc.join()
        w.conn.close()
        new = self._spawn()
        self._workers[self._workers.index(w)] = new
        return new

    def _dispatch(self) -> None:
        backlog: list[_Job] = []
        stopping = False
        while True:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                stopping |= job is None
                if job is not None:
                    backlog.append(job)
            self._hand_back()
            if stopping and not backlog and all(w.job is None for w in self._workers):
                break
            for w in list(self._workers):
                if w.job is None and backlog:
                    job = backlog.pop(0)
                    if not job.future.set_running_or_notify_cancel():
                        continue
                    try:
                        w.conn.send(("job", job.path, job.opts))
                    except OSError:  # the idle worker died: its replacement takes the job
                        w = self._replace(w)
                        w.conn.send(("job", job.path, job.opts))
                    w.job = (job.future, time.monotonic() + job.timeout)
            busy = [w for w in self._workers if w.job is not None]
            now = time.monotonic()
            timeout = min((w.job[1] - now for w in busy), default=None)
            ready = wait(
                [self._wake_r] + [w.conn for w in busy], timeout=max(0.0, timeout) if busy else None
            )
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
            self._collect(busy, ready)
        for w in self._workers:
            w.conn.send(None)
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.kill()

    def _hand_back(self) -> None:
        """Send recycled buffer numbers to the live workers that lent them (read before the
        worker's next job)."""
        by_owner: dict[int, list[int]] = {}
        while True:
            try:
                for owner, number in self._recycled.get_nowait():
                    by_owner.setdefault(owner, []).append(number)
            except queue.Empty:
                break
        for w in self._workers:
            if w.owner in by_owner:
                with contextlib.suppress(OSError):  # died: its buffers went with it
                    w.conn.send(("recycle", by_owner[w.owner]))
                    self.handed_back += len(by_owner[w.owner])

    def _collect(self, busy: list[_Worker], ready: list) -> None:
        now = time.monotonic()
        for w in busy:
            future, deadline = w.job
            if w.conn in ready:
                try:
                    ok, value = w.conn.recv()
                except (EOFError, OSError):
                    w.job = None
                    self._replace(w)
                    future.set_exception(MediaUnreadable("the decoder crashed on this media"))
                    continue
                w.job = None
                future.set_result(value) if ok else future.set_exception(value)
            elif now >= deadline:
                w.job = None
                self._replace(w)
                future.set_exception(
                    MediaTimeout("decoding the media took longer than the time limit")
                )


def run_all(
    pool: MediaPool, jobs: list[tuple[str, MediaOptions]]
) -> list[list[MediaItem] | MediaError]:
    """Submit every job, then gather results or errors in order (benchmarks and tests)."""
    futures = [pool.submit(p, o) for p, o in jobs]
    out: list[list[MediaItem] | MediaError] = []
    for f in futures:
        try:
            out.append(f.result())
        except MediaError as e:
            out.append(e)
    return out
