"""Prometheus metrics kept in Redis, so every gateway, worker and delivery process adds to
the same counters and any gateway can serve `/metrics`. Text exposition format 0.0.4, no
client library. Counters live in the hash `omnibatch:metrics`.

Each counter moves in the same atomic step as the state it counts: submitted with the job's
creation, started and attempts with the lease claim (workers/leases.py), finished with the
transition to a terminal status; so they agree with the job records exactly.
"""

from __future__ import annotations

import redis
from rq import Queue

from contract.schemas import JOB_QUEUES, WEBHOOK_QUEUE, JobStatus, Usage

METRICS_KEY = "omnibatch:metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# counter field in the hash → (metric name, labels, help)
_COUNTERS = {
    "jobs_submitted": ("omnibatch_jobs_submitted_total", "", "Jobs accepted by a gateway"),
    "jobs_started": (
        "omnibatch_jobs_started_total", "", "Jobs a worker started, each once however often it ran"
    ),
    "job_attempts": (
        "omnibatch_job_attempts_total", "",
        "Times a worker took a job: a job handed back (worker lost or stopped) counts again",
    ),
    **{
        f"jobs_{s.value}": (
            "omnibatch_jobs_finished_total",
            f'status="{s.value}"',
            "Jobs that reached a terminal status, by status",
        )
        for s in JobStatus
        if s.terminal
    },
    "processing_seconds": (
        "omnibatch_processing_seconds_total", "", "Wall seconds from start to end of jobs"
    ),
    "gpu_seconds": ("omnibatch_gpu_seconds_total", "", "GPU seconds reported by workers"),
    "video_seconds": (
        "omnibatch_media_seconds_total", 'kind="video"', "Seconds of media processed"
    ),
    "audio_seconds": (
        "omnibatch_media_seconds_total", 'kind="audio"', "Seconds of media processed"
    ),
    "input_tokens": ("omnibatch_tokens_total", 'kind="input"', "Model tokens"),
    "output_tokens": ("omnibatch_tokens_total", 'kind="output"', "Model tokens"),
    **{
        f"webhook_{o}": (
            "omnibatch_webhook_deliveries_total", f'outcome="{o}"', "Webhook delivery attempts"
        )
        for o in ("delivered", "retried", "gone", "abandoned")
    },
}  # fmt: skip


def incr(r: redis.Redis | redis.client.Pipeline, field: str) -> None:
    if field not in _COUNTERS:
        raise KeyError(f"unknown metric {field}")
    r.hincrbyfloat(METRICS_KEY, field, 1)


def record_finish(
    pipe: redis.client.Pipeline, status: JobStatus, usage: Usage, seconds: float
) -> None:
    """Queue the counters of one job's end on `pipe`: the transaction that ends the job
    (jobstore.finish), so that each job is counted once, with its end."""
    pipe.hincrbyfloat(METRICS_KEY, f"jobs_{status.value}", 1)
    pipe.hincrbyfloat(METRICS_KEY, "processing_seconds", max(seconds, 0.0))
    for field in ("gpu_seconds", "video_seconds", "audio_seconds", "input_tokens", "output_tokens"):
        pipe.hincrbyfloat(METRICS_KEY, field, getattr(usage, field))


def render(r: redis.Redis) -> str:
    values = {k.decode(): float(v) for k, v in r.hgetall(METRICS_KEY).items()}
    lines: list[str] = []
    seen: set[str] = set()
    for field, (name, labels, help_text) in _COUNTERS.items():
        if name not in seen:
            seen.add(name)
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        series = f"{name}{{{labels}}}" if labels else name
        value = values.get(field, 0.0)
        lines.append(f"{series} {int(value) if value.is_integer() else value!r}")
    lines += [
        "# HELP omnibatch_queue_depth Jobs waiting in a queue",
        "# TYPE omnibatch_queue_depth gauge",
    ]
    for name in (*JOB_QUEUES, WEBHOOK_QUEUE):
        depth = r.llen(Queue.redis_queue_namespace_prefix + name)
        lines.append(f'omnibatch_queue_depth{{queue="{name}"}} {depth}')
    return "\n".join(lines) + "\n"
