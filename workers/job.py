"""A job handed to the pipeline (`Pipeline.submit`): its handle (the result to come, the
cancel) and the threads that run jobs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass

from workers.engine.engine import Engine, Prepared


@dataclass
class JobOutput:
    text: str
    reasoning: str | None
    segments: list[dict] | None
    usage: dict
    warning: str | None = None
    json: object = None  # the answer parsed, with a JSON response_format (pipeline.py docstring)
    finish_reason: str | None = None  # "length" when any call behind `text` hit max_tokens


class Job:
    """`result()` gives the job's JobOutput or raises its error. `cancel()` stops its model
    calls at the engine's next step and its decoding before the next part; the result then
    keeps what finished (api.md: cancel). `future` resolves when the job is done, for
    `concurrent.futures.wait` and `add_done_callback`."""

    def __init__(self, engine: Engine, name: str):
        self.name = name
        self.future: Future[JobOutput] = Future()
        # video | audio | image | document, once decoding has opened the input
        self.media_type: str | None = None
        self._engine = engine
        self._lock = threading.Lock()
        self._cancelled = False
        self._rids: list[str] = []  # its requests in the engine

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled, rids, self._rids = True, self._rids, []
        for rid in rids:
            self._engine.cancel(rid)

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the job is done, waiting up to `timeout` seconds for it."""
        return not wait([self.future], timeout).not_done

    def result(self, timeout: float | None = None) -> JobOutput:
        return self.future.result(timeout)

    def track(self, preps: list[Prepared]) -> None:
        """Requests just handed to the engine for this job: a cancel that came first stops
        them now, one that comes later stops them then."""
        with self._lock:
            if not self._cancelled:
                self._rids += [p.rid for p in preps]
                return
        for p in preps:
            self._engine.cancel(p.rid)


class JobThreads:
    """Runs submitted jobs, `run(job, *args) -> JobOutput`, on up to `max_jobs` daemon threads
    started as jobs come; later jobs wait their turn, in order."""

    def __init__(self, run: Callable[..., JobOutput], max_jobs: int):
        self._run, self._max_jobs = run, max_jobs
        self._backlog: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._live: set[Job] = set()  # submitted, not done
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, job: Job, *args) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            self._live.add(job)
            self._backlog.put((job, args))
            if len(self._threads) < self._max_jobs:
                name = f"job-{len(self._threads)}"
                thread = threading.Thread(target=self._serve, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def close(self) -> None:
        """Jobs still queued or running are cancelled (their threads end when they return);
        with none left, the threads end here, and let go of what `run` holds."""
        with self._lock:
            self._closed, live = True, list(self._live)
        for job in live:
            job.cancel()
        for _ in self._threads:
            self._backlog.put(None)
        if not live:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (item := self._backlog.get()) is not None:
            job, args = item
            try:
                output = self._run(job, *args)
            except Exception as exc:  # the job's owner gets it from `Job.result`
                job.cancel()  # what it left in the engine stops there
                self._done(job)
                job.future.set_exception(exc)
            else:
                self._done(job)
                job.future.set_result(output)

    def _done(self, job: Job) -> None:
        with self._lock:
            self._live.discard(job)
