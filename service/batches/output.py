"""The lines of a batch's output and error files, in OpenAI's shapes.

Output line: `{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"},
"error": null}`, the body a `chat.completion` object whose extra key `omnibatch` holds what
the chat format has no place for (the job id, media usage, segments, the demo warning).
Error file: a job that ran and failed is a response with a 4xx/5xx status and an OpenAI error
body; a line that never ran (invalid, cancelled, expired, not fetched) has `response: null`
and `error {code, message}`.
"""

from __future__ import annotations

import secrets

from contract.jobstore import JobRecord
from contract.schemas import JobErrorCode, JobResult

_STATUS = {
    JobErrorCode.media_too_large: 413,
    JobErrorCode.media_unreadable: 400,
    JobErrorCode.media_unsupported: 400,
    JobErrorCode.media_too_long: 400,
    JobErrorCode.url_fetch_failed: 400,
    JobErrorCode.url_forbidden: 400,
    JobErrorCode.timeout: 504,
}
STOPPED = {
    "batch_cancelled": "the batch was cancelled before this request finished",
    "batch_expired": "the batch's 24h completion window ended before this request finished",
}


def _line_id(job_id: str | None) -> str:
    return f"batch_req_{job_id[4:] if job_id else secrets.token_hex(14)}"


def error_line(custom_id: str | None, code: str, message: str, job_id: str | None = None) -> dict:
    return {
        "id": _line_id(job_id),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def stopped_line(custom_id: str, code: str, job_id: str) -> dict:
    return error_line(custom_id, code, STOPPED[code], job_id)


def failure_line(custom_id: str, job: JobRecord) -> dict:
    """A job that ran (or was expired by the queue) and ended without a result."""
    code = job.error.code if job.error else JobErrorCode.internal
    status = _STATUS.get(code, 500)
    error = {
        "message": job.error.message if job.error else "the request failed",
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": None,
        "code": code.value,
    }
    response = {"status_code": status, "request_id": job.id, "body": {"error": error}}
    return {"id": _line_id(job.id), "custom_id": custom_id, "response": response, "error": None}


def success_line(custom_id: str, job: JobRecord, result: JobResult) -> dict:
    response = {"status_code": 200, "request_id": job.id, "body": chat_completion(job, result)}
    return {"id": _line_id(job.id), "custom_id": custom_id, "response": response, "error": None}


def chat_completion(job: JobRecord, result: JobResult) -> dict:
    out, usage = result.output, result.usage
    message = {"role": "assistant", "content": out.text, "refusal": None}
    if out.reasoning is not None:
        message["reasoning_content"] = out.reasoning  # vLLM's name for it
    extra: dict = {"job_id": job.id, "usage": usage.model_dump()}
    if out.segments is not None:
        extra["segments"] = [s.model_dump(exclude_none=True) for s in out.segments]
    if out.warning is not None:
        extra["warning"] = out.warning
    return {
        "id": f"chatcmpl-{job.id[4:]}",
        "object": "chat.completion",
        "created": int(job.finished_at or job.created_at),
        "model": result.model.name,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": out.finish_reason or "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
        "omnibatch": extra,
    }
