"""The GPU worker: one long-lived process per GPU, several jobs in flight.

RQ's stock worker forks a child per job, and CUDA cannot live in a forked child, so this
process never forks: it loads the pipeline once, then its own loop leases job ids off the
RQ queues (high > normal > low; workers/leases.py) and runs up to `max_concurrent_jobs` of
them in threads that feed the one pipeline. A heartbeat thread publishes
`omnibatch:workers:{id}` for /readyz, renews the leases of the jobs in flight, and sweeps
the expired leases of dead workers back onto their queues.

SIGTERM/SIGINT: no new jobs; the jobs in flight get `shutdown_grace_s` to finish, then the
rest go back to the head of their queues and the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid

import redis
from rq import Queue

from service import jobstore
from service.schemas import (
    JOB_QUEUES,
    WORKER_HEARTBEAT_PREFIX,
    WORKER_HEARTBEAT_TTL_S,
    ModelInfo,
    worker_heartbeat_key,
)
from service.settings import WorkerSettings
from service.storage import Storage
from workers.leases import LeaseTable
from workers.tasks import Attempt, JobContext, job_timeout_s, run_job

log = logging.getLogger("omnibatch.worker")
IDLE_POLL_S = 0.2  # queues are polled (the lease pop is a script, not a blocking pop)


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.redis = jobstore.connect(settings.redis_url)
        self.id = f"{socket.gethostname()}:{settings.device}:{os.getpid()}"
        self.leases = LeaseTable(
            self.redis, self.id, settings.lease_ttl_s, settings.job_record_ttl_s
        )
        self.queues = [Queue(name, connection=self.redis) for name in JOB_QUEUES]
        self.stopping = threading.Event()
        self._stopped = threading.Event()
        self.model_loaded = False
        self.in_flight: dict[str, Attempt] = {}
        self._lock = threading.Lock()

    # -- heartbeat ---------------------------------------------------------------------
    def _beat(self) -> None:
        key = worker_heartbeat_key(self.id)
        with self._lock:
            attempts = list(self.in_flight.values())
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={
                "model_loaded": "1" if self.model_loaded else "0",
                "device": self.settings.device, "host": socket.gethostname(),
                "pid": os.getpid(), "jobs_in_flight": len(attempts), "seen_at": time.time(),
            })  # fmt: skip
            pipe.expire(key, WORKER_HEARTBEAT_TTL_S)
            pipe.execute()
        held = self.leases.renew([a.lease for a in attempts])
        for attempt, still_held in zip(attempts, held, strict=True):
            if not still_held:  # swept as if we were dead; the requeued copy will finish it
                log.warning("job %s: lease lost; abandoning this attempt", attempt.lease.job_id)
                attempt.abandon.set()
        for job_id in self._expired_leases():
            log.warning("job %s: its worker was lost; requeued", job_id)

    def _expired_leases(self) -> list[str]:
        """Requeue the jobs of dead workers: the record goes back to `queued` first, then the
        id to its queue, so a crash in between leaves a queued job the next sweep pushes."""
        for job_id in self.leases.expired():
            jobstore.mark_requeued(self.redis, job_id)
        return self.leases.sweep()

    def _heartbeat_loop(self) -> None:
        interval = min(self.settings.lease_ttl_s, WORKER_HEARTBEAT_TTL_S) / 3
        while not self._stopped.wait(interval):
            try:
                self._beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- jobs --------------------------------------------------------------------------
    def _take(self) -> Attempt | None:
        lease = self.leases.claim(self.queues, f"{self.id}:{uuid.uuid4().hex}")
        if lease is None:
            return None
        timeout = job_timeout_s(self.redis, lease.job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        return Attempt(lease, deadline, threading.Event())

    def _run(self, ctx: JobContext, attempt: Attempt) -> None:
        try:
            run_job(attempt.lease.job_id, ctx, attempt)
        except redis.RedisError as exc:  # the lease expires and another attempt runs it
            log.error("job %s: Redis failed while recording: %s", attempt.lease.job_id, exc)
        finally:
            with self._lock:
                self.in_flight.pop(attempt.lease.job_id, None)

    def _loop(self, ctx: JobContext) -> None:
        while not self.stopping.is_set():
            if len(self.in_flight) >= self.settings.max_concurrent_jobs:
                self.stopping.wait(IDLE_POLL_S)
                continue
            try:
                attempt = self._take()
            except redis.RedisError as exc:
                log.warning("cannot reach Redis: %s", exc)
                self.stopping.wait(1.0)
                continue
            if attempt is None:
                self.stopping.wait(IDLE_POLL_S)
                continue
            with self._lock:
                self.in_flight[attempt.lease.job_id] = attempt
            name = f"job-{attempt.lease.job_id}"
            threading.Thread(target=self._run, args=(ctx, attempt), name=name, daemon=True).start()

    def _drain(self) -> None:
        """After a stop signal: wait for the jobs in flight, then give back the rest."""
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            left = list(self.in_flight.values())
        for attempt in left:
            attempt.abandon.set()
            if self.leases.requeue(attempt.lease):
                jobstore.mark_requeued(self.redis, attempt.lease.job_id)
                log.info("job %s: handed back to its queue", attempt.lease.job_id)

    def serve(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        from workers.pipeline import Pipeline, PipelineConfig

        log.info("worker %s loading the model on %s", self.id, self.settings.device)
        s = self.settings
        config = PipelineConfig(s.media_limits, s.max_concurrent_jobs)
        pipeline = Pipeline.load(s.model, s.device, s.gpu_memory_gb, config, s.quantize)
        ctx = JobContext(
            self.redis, Storage(self.settings.data_dir), self.leases, pipeline,
            ModelInfo.model_validate(pipeline.model_info, from_attributes=True), self.id,
        )  # fmt: skip
        self.model_loaded = True
        self._beat()
        log.info("worker %s ready", self.id)
        try:
            self._loop(ctx)
        finally:
            self._drain()
            self._stopped.set()
            heartbeat.join()
            self.redis.delete(worker_heartbeat_key(self.id))
            log.info("worker %s stopped", self.id)


def run_worker(device: str | None) -> int:
    settings = WorkerSettings(**({"device": device} if device else {}))
    Worker(settings).serve()
    # Jobs handed back may still be unwinding in their threads, inside torch; a normal
    # interpreter exit would tear torch down under them (abort), so leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_ready(device: str | None) -> int:
    """Health check: 0 when a worker on this host (and device) has loaded its model and its
    heartbeat is fresh (the key expires otherwise)."""
    settings = WorkerSettings(**({"device": device} if device else {}))
    r = jobstore.connect(settings.redis_url)
    prefix = f"{WORKER_HEARTBEAT_PREFIX}{socket.gethostname()}:{settings.device}:"
    for key in r.scan_iter(match=prefix + "*"):
        if r.hget(key, "model_loaded") == b"1":
            return 0
    return 1
