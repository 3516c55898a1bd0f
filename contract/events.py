"""Webhook events: written once when a job with a `webhook` ends, delivered by
service/webhooks.py from the `webhooks` queue.

Redis: hash `omnibatch:event:{evt_id}` {job_id, url, secret, body, first_attempt_at,
attempts}; the RQ job `WEBHOOK_FUNCTION(evt_id)` on the `webhooks` queue.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis
from rq import Queue

from contract.schemas import KEY_PREFIX, WEBHOOK_QUEUE, JobStatus, WebhookEvent, WebhookEventData

if TYPE_CHECKING:
    from contract.jobstore import JobRecord

WEBHOOK_FUNCTION = "service.webhooks.deliver"


def event_key(event_id: str) -> str:
    return f"{KEY_PREFIX}event:{event_id}"


def enqueue(
    r: redis.Redis, pipe: redis.client.Pipeline, rec: JobRecord, status: JobStatus, now: float
) -> str:
    """Write the event of `rec` ending with `status` and queue its first delivery, on `pipe`
    (the transaction that ends the job, in MULTI mode); returns its id."""
    event_id = f"evt_{secrets.token_hex(12)}"
    event = WebhookEvent(
        type=f"job.{status.value}",
        id=event_id,
        created_at=datetime.fromtimestamp(now, UTC),
        data=WebhookEventData(
            job_id=rec.id, status=status, result_url=rec.result_url, metadata=rec.request.metadata
        ),
    )
    pipe.hset(
        event_key(event_id),
        mapping={
            "job_id": rec.id,
            "url": rec.request.webhook.url,
            "secret": rec.webhook_secret or "",
            "body": event.model_dump_json(),
            "first_attempt_at": now,
        },
    )
    Queue(WEBHOOK_QUEUE, connection=r).enqueue(
        WEBHOOK_FUNCTION, event_id, result_ttl=0, pipeline=pipe
    )
    return event_id
