"""The Files and Batch API objects in OpenAI's shapes (openai-python `types/file_object.py`,
`types/batch.py`), so that the official client parses them unchanged. Times are unix seconds.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.schemas import MetadataKey, MetadataValue
from service.batches.ids import FILE_ID_RE

CHAT_ENDPOINT = "/v1/chat/completions"  # the one endpoint a batch can target
COMPLETION_WINDOW = "24h"  # the one window OpenAI offers
UPLOAD_PURPOSES = ("batch", "user_data")  # what POST /v1/files accepts
OUTPUT_PURPOSE = "batch_output"  # a batch's output and error files


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: Literal["batch", "batch_output", "user_data"]
    status: Literal["uploaded", "processed", "error"] = "processed"  # deprecated by OpenAI
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchStatus(StrEnum):
    validating = "validating"
    failed = "failed"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (
            BatchStatus.failed, BatchStatus.completed, BatchStatus.expired, BatchStatus.cancelled
        )  # fmt: skip


class BatchCreate(BaseModel):
    """`POST /v1/batches`. The schema publishes the one value of `endpoint` and of
    `completion_window` we run and the shape of a file id; validation lets other text through
    so that the route refuses it with a 400 that names what is supported (a well-formed id
    that names no file of the caller's is a 404)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=64, json_schema_extra={"pattern": FILE_ID_RE.pattern})
    endpoint: str = Field(max_length=200, json_schema_extra={"enum": [CHAT_ENDPOINT]})
    completion_window: str = Field(max_length=20, json_schema_extra={"enum": [COMPLETION_WINDOW]})
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None  # 1-based line of the input file


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class _InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class _OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: _InputTokensDetails = Field(default_factory=_InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: _OutputTokensDetails = Field(default_factory=_OutputTokensDetails)
    total_tokens: int = 0


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None  # the `model` of the first valid line
    errors: BatchErrors | None = None  # why a batch `failed` validation, by line
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
