"""What a finished pipeline run becomes: the contract's Output/Usage, or a JobError.

Shared by the queue worker (workers/tasks.py) and `omnibatch run` (workers/local_run.py), so
one request gives one answer whichever door it came through.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from contract.schemas import JobError, JobErrorCode, Output, Segment, Usage
from media.errors import MediaError
from workers.engine.recovery import OutOfMemory, ResourcesExhausted

if TYPE_CHECKING:
    from workers.job import JobOutput

log = logging.getLogger("omnibatch.worker")


def output_of(result: JobOutput) -> Output:
    """The pipeline's JobOutput as the contract's Output."""
    segments = None
    if result.segments is not None:
        segments = [Segment.model_validate(s, from_attributes=True) for s in result.segments]
    return Output(
        text=result.text,
        reasoning=result.reasoning,
        json_=result.json,
        finish_reason=result.finish_reason,
        segments=segments,
        warning=result.warning,
    )


def usage_of(result: JobOutput) -> Usage:
    return Usage.model_validate(result.usage, from_attributes=True)


def error_of(exc: BaseException, job_id: str) -> JobError:
    """Map an exception to the job's error: media errors keep their code and client-safe
    message; anything unexpected is logged with its traceback and answered generically."""
    if isinstance(exc, MediaError | ResourcesExhausted):
        return JobError(code=JobErrorCode(exc.code), message=exc.message)
    log.error("job %s failed", job_id, exc_info=exc)
    if isinstance(exc, OutOfMemory):  # one the engine did not recover: still not the input's
        return JobError(
            code=JobErrorCode.resources_exhausted, message=ResourcesExhausted("GPU").message
        )
    # torch and CUDA failures (out of memory included) raise RuntimeError, bad shapes
    # ValueError: the model's failures. Any other type escaping the pipeline is our bug.
    if isinstance(exc, (RuntimeError, ValueError, ArithmeticError)):
        return JobError(code=JobErrorCode.model_error, message="the model failed on this input")
    return JobError(code=JobErrorCode.internal, message="internal error")
