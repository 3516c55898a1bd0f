"""The GPU worker: one long-lived process per GPU, several jobs in flight.

RQ's stock worker forks a child per job, and CUDA cannot live in a forked child, so this
process never forks: it loads the pipeline once, then its own loop leases job ids off the
RQ queues (high > normal > low; workers/leases.py) and runs up to `max_concurrent_jobs` of
them in threads that feed the one pipeline. Redis traffic is bounded, whatever the number of
jobs: a heartbeat thread publishes `omnibatch:workers:{id}` for /readyz, renews every lease
in one round trip and sweeps the expired leases of dead workers back onto their queues; a
watch thread reads all cancel flags and writes all progress in one round trip
(workers/job_watch.py); job threads only read their job and record its end.

SIGTERM/SIGINT: no new jobs; the jobs in flight get `shutdown_grace_s` to finish, then the
rest go back to the head of their queues and the process exits 0. If the engine thread dies
(workers/engine/engine.py), the worker turns unready at once, hands every job back and
exits 1, for its supervisor (`omnibatch serve`, Compose) to start a fresh one.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

import redis
from rq import Queue

from contract import jobstore
from contract.schemas import (
    JOB_QUEUES,
    WORKER_HEARTBEAT_PREFIX,
    WORKER_HEARTBEAT_TTL_S,
    ModelInfo,
    worker_heartbeat_key,
)
from contract.settings import WorkerSettings
from contract.storage import Storage
from workers.job_watch import WATCH_INTERVAL_S, JobWatch
from workers.leases import LeaseTable
from workers.tasks import Attempt, JobContext, job_timeout_s, run_job

if TYPE_CHECKING:
    from workers.pipeline import Pipeline

log = logging.getLogger("omnibatch.worker")
IDLE_POLL_S = 0.2  # queues are polled (the lease pop is a script, not a blocking pop)
# Job threads queue for these (jobstore.POOL_WAIT_S) rather than each holding one.
REDIS_CONNECTIONS = 32
DEAD_ENGINE_GRACE_S = 10.0  # for jobs already recording their end when the engine died


def claim_gpu(device: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """The name this process uses for `device`: "cuda:N" → "cuda:0", with GPU N made the only
    one it sees (CUDA_VISIBLE_DEVICES, before CUDA starts). Side streams, CUDA graph captures
    and Triton launches go to a thread's current device, 0 in every new thread: with all
    GPUs visible, a worker of GPU N would launch them on GPU 0. Other devices as they are."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index:
        return device
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError(f"claim_gpu({device!r}) after CUDA started in this process")
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible is not None else None
    if gpus is not None and int(index) >= len(gpus):
        raise SystemExit(f"--device {device}: CUDA_VISIBLE_DEVICES={visible} names fewer GPUs")
    environ["CUDA_VISIBLE_DEVICES"] = gpus[int(index)].strip() if gpus is not None else index
    return "cuda:0"


class Worker:
    """`pipeline`: one built by the caller (the scale-out benchmark's full-size random model,
    which no checkpoint on disk holds); None: `serve` loads the settings' model."""

    def __init__(self, settings: WorkerSettings, pipeline: Pipeline | None = None):
        self.settings = settings
        self.redis = jobstore.connect(settings.redis_url, REDIS_CONNECTIONS)
        self.id = f"{socket.gethostname()}:{settings.device}:{os.getpid()}"
        self.leases = LeaseTable(
            self.redis, self.id, settings.lease_ttl_s, settings.job_record_ttl_s
        )
        self.queues = [Queue(name, connection=self.redis) for name in JOB_QUEUES]
        self.stopping = threading.Event()
        self._stopped = threading.Event()
        self.pipeline = pipeline  # else loaded by serve()
        self.model_loaded = False
        self.engine_died = False
        self.in_flight: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._watch = JobWatch(self.redis, self._attempts)
        # After Redis was unreachable, sweep only once the other workers had a lease TTL to
        # renew theirs: their leases expired on the Redis clock while nobody could renew.
        self._sweep_from = 0.0

    def _attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self.in_flight.values())

    # -- heartbeat ---------------------------------------------------------------------
    def _beat(self) -> None:
        key = worker_heartbeat_key(self.id)
        attempts = self._attempts()
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
            # Lost: swept as if we were dead; the requeued copy will finish the job.
            if not still_held and not attempt.recorded:
                log.warning("job %s: lease lost; abandoning this attempt", attempt.lease.job_id)
                attempt.abandon.set()
        if time.monotonic() >= self._sweep_from:
            for job_id in self.leases.sweep():
                log.warning("job %s: its worker was lost; requeued", job_id)

    def _heartbeat_loop(self) -> None:
        interval = min(self.settings.lease_ttl_s, WORKER_HEARTBEAT_TTL_S) / 3
        while not self._stopped.wait(interval):
            try:
                self._beat()
                if self._sweep_from == math.inf:
                    self._sweep_from = time.monotonic() + self.settings.lease_ttl_s
            except redis.RedisError as exc:
                self._sweep_from = math.inf
                log.warning("heartbeat failed: %s", exc)

    def _watch_loop(self) -> None:
        while not self._stopped.wait(WATCH_INTERVAL_S):
            try:
                self._watch.tick()
            except redis.RedisError as exc:
                log.warning("cannot read cancel flags or write progress: %s", exc)

    # -- jobs --------------------------------------------------------------------------
    def _take(self) -> Attempt | None:
        lease = self.leases.claim(self.queues, f"{self.id}:{uuid.uuid4().hex}")
        if lease is None:
            return None
        timeout = job_timeout_s(self.redis, lease.job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        return Attempt(lease, deadline)

    def _run(self, ctx: JobContext, attempt: Attempt) -> None:
        try:
            run_job(attempt.lease.job_id, ctx, attempt)
        except redis.RedisError as exc:  # abandoned while Redis was away: the drain hands
            log.error("job %s: Redis failed: %s", attempt.lease.job_id, exc)  # it back
        except Exception:  # a bug past the job boundary: the lease expires, the job reruns
            log.exception("job %s: the job thread failed", attempt.lease.job_id)
        finally:
            with self._lock:
                self.in_flight.pop(attempt.lease.job_id, None)

    def _loop(self, ctx: JobContext) -> None:
        while not self.stopping.is_set():
            if not ctx.pipeline.engine.alive:
                self._engine_dead()
                return
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

    def _engine_dead(self) -> None:
        """Unready at once (no new jobs come here), then the drain hands the jobs back."""
        log.critical("worker %s: the engine thread died; handing back its jobs", self.id)
        self.engine_died = True
        self.model_loaded = False
        try:
            self.redis.delete(worker_heartbeat_key(self.id))
        except redis.RedisError as exc:
            log.warning("cannot remove the heartbeat (it expires): %s", exc)

    def _drain(self) -> None:
        """After a stop: wait for the jobs in flight, then give back the rest."""
        grace = self.settings.shutdown_grace_s
        if self.engine_died:
            grace = min(grace, DEAD_ENGINE_GRACE_S)
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self._attempts()
        for attempt in left:
            attempt.abandon.set()
        for attempt in left:
            try:
                # a shutdown loses nothing: the hand-back is not one of the job's attempts
                if self.leases.release(attempt.lease, forgive=not self.engine_died):
                    log.info("job %s: handed back to its queue", attempt.lease.job_id)
            except redis.RedisError as exc:  # its lease expires; a sweep requeues it
                log.warning("job %s: not handed back: %s", attempt.lease.job_id, exc)

    def serve(self) -> int:
        """Returns the exit status: 0 after a stop signal, 1 after the engine died."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._watch_loop, name="job-watch", daemon=True),
        ]
        threads[0].start()
        from workers.pipeline import Pipeline, PipelineConfig

        if self.pipeline is None:
            log.info("worker %s loading the model on %s", self.id, self.settings.device)
            s = self.settings
            device = claim_gpu(s.device)
            config = PipelineConfig.of(s)
            self.pipeline = Pipeline.load(s.model, device, s.gpu_memory_gb, config, s.quantize)
        ctx = JobContext(
            self.redis, Storage(self.settings.data_dir), self.leases, self.pipeline,
            ModelInfo.model_validate(self.pipeline.model_info, from_attributes=True), self.id,
        )  # fmt: skip
        self.model_loaded = True
        self._beat()
        threads[1].start()
        log.info("worker %s ready", self.id)
        try:
            self._loop(ctx)
        finally:
            self._drain()
            self._stopped.set()
            for thread in threads:
                thread.join()
            try:
                self.redis.delete(worker_heartbeat_key(self.id))
            except redis.RedisError as exc:
                log.warning("cannot remove the heartbeat (it expires): %s", exc)
            log.info("worker %s stopped", self.id)
        return 1 if self.engine_died else 0


def run_worker(device: str | None, pipeline: Pipeline | None = None) -> int:
    settings = WorkerSettings(**({"device": device} if device else {}))
    status = Worker(settings, pipeline).serve()
    # Jobs handed back may still be unwinding in their threads, inside torch; a normal
    # interpreter exit would tear torch down under them (abort), so leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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
