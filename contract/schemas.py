"""The job contract (docs/api.md §1), shared by the gateway and `workers/`.

Request models forbid unknown fields so a typo is an error, not a silently ignored option.
Everything here is plain pydantic: `workers/` imports it without pulling in FastAPI.

Redis names every process agrees on (documented once, here):
- RQ queues: `jobs:high`, `jobs:normal`, `jobs:low` (taken in that order) and `webhooks`.
  The RQ job id equals our job id; the job function is `workers.tasks.run_job(job_id)`.
- Job record: hash `omnibatch:job:{job_id}` (fields: contract/jobstore.py), in the sorted sets
  `omnibatch:owner:{owner}:jobs` and, once finished, `omnibatch:retention` (contract/retention.py).
- Cancel flag: string `omnibatch:job:{job_id}:cancel`, set while a running job should stop.
- Worker heartbeat: hash `omnibatch:workers:{worker_id}` with field `model_loaded` ("1"/"0"),
  refreshed with an expiry of WORKER_HEARTBEAT_TTL_S; `/readyz` needs one with "1".
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from contract.json_grammar import JSON_OBJECT_SCHEMA, json_grammar

QUEUE_HIGH = "jobs:high"
QUEUE_NORMAL = "jobs:normal"
QUEUE_LOW = "jobs:low"
JOB_QUEUES = (QUEUE_HIGH, QUEUE_NORMAL, QUEUE_LOW)  # the order a worker takes them in
WEBHOOK_QUEUE = "webhooks"
JOB_FUNCTION = "workers.tasks.run_job"

# `job_` + 12 hex digits of creation milliseconds + 16 random (contract.jobstore.new_job_id)
JOB_ID_RE = re.compile(r"^job_[0-9a-f]{28}$")

KEY_PREFIX = "omnibatch:"
WORKER_HEARTBEAT_PREFIX = f"{KEY_PREFIX}workers:"
WORKER_HEARTBEAT_TTL_S = 10  # /readyz follows a worker's death within this


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def owner_index_key(owner: str) -> str:
    return f"{KEY_PREFIX}owner:{owner}:jobs"


def cancel_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}:cancel"


def worker_heartbeat_key(worker_id: str) -> str:
    return f"{WORKER_HEARTBEAT_PREFIX}{worker_id}"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"

    @property
    def queue(self) -> str:
        return f"jobs:{self.value}"


class Task(StrEnum):
    caption = "caption"
    summarize = "summarize"
    transcribe = "transcribe"
    extract = "extract"
    ask = "ask"


class MediaType(StrEnum):
    video = "video"
    audio = "audio"
    image = "image"
    document = "document"


class JobErrorCode(StrEnum):
    """`error.code` of a failed (or cancelled) job."""

    media_unreadable = "media_unreadable"
    media_unsupported = "media_unsupported"
    media_too_large = "media_too_large"
    media_too_long = "media_too_long"
    url_fetch_failed = "url_fetch_failed"
    url_forbidden = "url_forbidden"
    model_error = "model_error"
    resources_exhausted = "resources_exhausted"  # needs more GPU memory than the worker has
    timeout = "timeout"
    worker_lost = "worker_lost"
    invalid_request = "invalid_request"  # the stored request no longer validates (version skew)
    cancelled = "cancelled"
    internal = "internal"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        """Requests are read strictly (service/submit.py: `"5"` and `false` are no integers),
        but JSON Schema counts 5.0 an integer and pydantic's strict mode does not."""
        if not isinstance(data, dict):
            return data
        return {k: _int_if_integral(v) if _takes_int(cls, k) else v for k, v in data.items()}


def _takes_int(model: type[BaseModel], name: str) -> bool:
    field = model.model_fields.get(name)
    return field is not None and (field.annotation is int or int in get_args(field.annotation))


def _int_if_integral(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _http_only(v: str) -> str:
    if not v.lower().startswith(("http://", "https://")):
        raise ValueError("must be an http or https URL")
    return v


HttpUrlText = Annotated[
    str,
    StringConstraints(max_length=4096),
    AfterValidator(_http_only),
    Field(json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),  # what _http_only checks
]


class InputSpec(_Strict):
    url: HttpUrlText


class VideoOptions(_Strict):
    """`end_s`, when given with `start_s`, must be greater than it."""

    fps: float = Field(1.0, gt=0, le=8)
    max_frames: int = Field(512, ge=2, le=1024)
    evs_rate: float | None = Field(None, ge=0, le=0.95)  # None: the checkpoint's default
    use_audio: bool = True
    start_s: float | None = Field(None, ge=0)
    end_s: float | None = Field(None, gt=0)
    chunk_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> VideoOptions:
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError("video.end_s must be greater than video.start_s")
        return self


class GenerationOptions(_Strict):
    max_tokens: int = Field(1024, ge=1, le=32768)
    temperature: float = Field(0.2, ge=0, le=2)  # 0 = greedy
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    thinking: bool = False


# `whsec_` + padded base64 of at least one byte: what signing decodes (service/webhooks.py)
_B64 = "[A-Za-z0-9+/]"
WEBHOOK_SECRET_RE = rf"^whsec_(?:{_B64}{{4}})*(?:{_B64}{{2}}==|{_B64}{{3}}=|{_B64}{{4}})$"


class WebhookOptions(_Strict):
    url: HttpUrlText
    secret: Annotated[str, StringConstraints(pattern=WEBHOOK_SECRET_RE)] | None = None


class TextFormat(_Strict):
    """Free text (the default)."""

    # The union's tag: a request names it (`{}` is refused), only Python builds TextFormat()
    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["type"]})

    type: Literal["text"] = "text"

    def grammar(self) -> str | None:
        return None


class JsonObjectFormat(_Strict):
    """Any JSON object (OpenAI's JSON mode)."""

    type: Literal["json_object"]

    def grammar(self) -> str | None:
        return json_grammar(JSON_OBJECT_SCHEMA, strict=True)


class JsonSchemaSpec(_Strict):
    # `schema` and `json` shadow BaseModel attributes: the fields are `schema_`/`json_` in Python
    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = Field(
        None, description="true: refuse schema keywords the grammar library does not implement"
    )  # None = false, as OpenAI reads it


class JsonSchemaFormat(_Strict):
    """JSON that matches `json_schema.schema` (OpenAI's Structured Outputs shape)."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec

    def grammar(self) -> str | None:
        return json_grammar(self.json_schema.schema_, strict=bool(self.json_schema.strict))


# `grammar()`: the llguidance grammar text of the format, None for free text. The gateway
# compiles it at submit (service/submit.py), the worker constrains decoding with it.
ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


# _ask_needs_prompt, told to OpenAPI clients: another task, or a prompt
_ASK_NEEDS_PROMPT = {
    "anyOf": [
        {"properties": {"task": {"enum": [t.value for t in Task if t is not Task.ask]}}},
        {"properties": {"prompt": {"type": "string", "minLength": 1}}, "required": ["prompt"]},
    ]
}


class JobCreate(_Strict):
    """The submit request: the `request` part of a multipart upload, or the JSON body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ASK_NEEDS_PROMPT)

    task: Task = Task.caption
    prompt: Annotated[str, StringConstraints(max_length=8000)] | None = None
    input: InputSpec | None = None
    media_type: MediaType | None = None  # None: sniffed from the content
    video: VideoOptions = Field(default_factory=VideoOptions)
    generation: GenerationOptions = Field(default_factory=GenerationOptions)
    response_format: ResponseFormat = Field(
        default_factory=TextFormat,
        description="OpenAI's shape. json_object / json_schema constrain the answer to JSON; the "
        "result's output.json holds it parsed (docs/api.md, Structured output)",
    )
    webhook: WebhookOptions | None = None
    priority: Priority = Priority.normal
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _ask_needs_prompt(self) -> JobCreate:
        if self.task is Task.ask and not self.prompt:
            raise ValueError("task 'ask' requires a prompt")
        return self


class Progress(BaseModel):
    stage: str = "queued"  # e.g. queued, fetching, decoding, encoding, generating, done
    done: int = 0
    total: int = 0


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    video_seconds: float = 0.0
    audio_seconds: float = 0.0
    pages: int = 0
    images: int = 0
    frames_sampled: int = 0
    video_tokens_before_evs: int = 0
    video_tokens_after_evs: int = 0
    gpu_seconds: float = 0.0


class JobError(BaseModel):
    code: JobErrorCode
    message: str


class WebhookState(BaseModel):
    attempts: int = 0
    last_status: int | None = None  # HTTP status of the last attempt; None: no response
    delivered_at: datetime | None = None
    state: Literal["pending", "delivered", "failed"] = "pending"
    next_attempt_at: datetime | None = None


class Links(BaseModel):
    self: str
    result: str


class JobSubmitted(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    links: Links


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    task: Task
    priority: Priority
    media_type: MediaType | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    queue_position: int | None = None  # jobs ahead of this one, while queued
    usage: Usage | None = None
    error: JobError | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook: WebhookState | None = None
    links: Links


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = None


class ModelInfo(BaseModel):
    name: str
    revision: str | None = None
    precision: str | None = None


# Why a model call ended: "stop" (end of its answer), "length" (generation.max_tokens reached:
# the text is cut short, and a structured output's `json` is null).
FinishReason = Literal["stop", "length"]


class Segment(BaseModel):
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    start_s: float | None = None
    end_s: float | None = None
    page: int | None = None  # documents: one segment per page
    text: str
    json_: Any = Field(None, alias="json")  # with a JSON response_format: `text` parsed
    finish_reason: FinishReason | None = None


class Output(BaseModel):
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    text: str
    reasoning: str | None = None
    # With a JSON response_format: `text` parsed, when it is one model call's answer (one
    # segment, or the final pass of `summarize`) and that call finished with "stop".
    json_: Any = Field(None, alias="json", description="with a JSON response_format: the answer")
    finish_reason: FinishReason | None = Field(
        None, description="length: generation.max_tokens cut the answer (or a segment) short"
    )
    segments: list[Segment] | None = None
    warning: str | None = None  # e.g. the demo checkpoint's "text is meaningless"


class JobResult(BaseModel):
    id: str
    status: JobStatus
    model: ModelInfo
    output: Output
    usage: Usage
    metadata: dict[str, str] = Field(default_factory=dict)


class WebhookEventData(BaseModel):
    job_id: str
    status: JobStatus
    result_url: str
    metadata: dict[str, str] = Field(default_factory=dict)


class WebhookEvent(BaseModel):
    type: Literal["job.succeeded", "job.failed", "job.cancelled", "job.expired"]
    id: str
    created_at: datetime
    data: WebhookEventData


class Problem(BaseModel):
    """RFC 9457 problem details, with our stable `code`."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
