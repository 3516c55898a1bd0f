"""One line of a batch input file → the job request it becomes and where its media is.

A line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`; the
body is a chat-completions request with one user message. Its content parts map onto a job:
the text parts, joined, are the `prompt` (task `ask`; with no text the task is `caption`), and
exactly one media part is the job's input, as OpenAI spells them (`image_url`, `input_audio`,
`file` for PDFs and other documents) or as vLLM extends them (`video_url`, `audio_url`). The
media is an http(s) URL, a base64 data URL, or the `file_id` of an uploaded file; the part's
type does not decide the media type: the bytes are sniffed, as for `POST /v1/jobs`.

Generation parameters keep their /v1/jobs meaning and defaults; vLLM's
`chat_template_kwargs.enable_thinking` turns thinking on, and the extra key `omnibatch`
carries our own options (`video`). Anything else a chat request may hold (`tools`, `stream`,
`n` > 1, `logprobs`, …) is refused by name rather than silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.json_grammar import grammar_problem
from contract.schemas import JobCreate, VideoOptions
from service.errors import describe_validation

MAX_CUSTOM_ID = 512  # it travels in the job's metadata, whose values hold 512 characters
MAX_URL = 4096


class LineError(Exception):
    """A line that cannot run; it goes to the error file as `{"code", "message"}`."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param
        self.custom_id: str | None = None  # set once the line's envelope has been read


@dataclass(frozen=True)
class MediaRef:
    """Exactly one of: an http(s) URL (fetched when the line is fed), decoded bytes (a data
    URL or `input_audio`), or the id of an uploaded file."""

    url: str | None = None
    data: bytes | None = None
    file_id: str | None = None


@dataclass(frozen=True)
class LineJob:
    request: JobCreate
    media: MediaRef
    model: str | None  # the body's `model`, echoed on the batch


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Text(_Strict):
    type: Literal["text"]
    text: str


class _Url(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's image detail: no effect here


class _Image(_Strict):
    type: Literal["image_url"]
    image_url: _Url


class _Video(_Strict):
    type: Literal["video_url"]
    video_url: _Url


class _AudioUrl(_Strict):
    type: Literal["audio_url"]
    audio_url: _Url


class _AudioData(_Strict):
    data: str  # base64
    format: str  # OpenAI's wav | mp3 | …: the bytes are sniffed instead


class _Audio(_Strict):
    type: Literal["input_audio"]
    input_audio: _AudioData


class _FileRef(_Strict):
    file_id: str | None = None
    file_data: str | None = None  # a data URL
    filename: str | None = None


class _File(_Strict):
    type: Literal["file"]
    file: _FileRef


_Part = Annotated[_Text | _Image | _Video | _AudioUrl | _Audio | _File, Field(discriminator="type")]


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part]
    name: str | None = None


class _TemplateKwargs(_Strict):
    enable_thinking: bool = False


class _Extras(_Strict):
    video: VideoOptions | None = None


class _ChatBody(_Strict):
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    n: Literal[1] | None = None
    stream: Literal[False] | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: _TemplateKwargs | None = None
    omnibatch: _Extras | None = None


def parse_line(raw: bytes, endpoint: str) -> tuple[str, dict]:
    """The envelope of one line → (custom_id, body). Raises LineError."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineError("invalid_json_line", "the line is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise LineError("invalid_json_line", "the line is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_required_parameter", "custom_id is missing", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise LineError("invalid_request", f"custom_id is longer than {MAX_CUSTOM_ID}", "custom_id")
    extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if extra:
        raise LineError("invalid_request", f"unexpected keys {extra}", extra[0])
    if obj.get("method") != "POST":
        raise LineError("invalid_method", "method must be POST", "method")
    if obj.get("url") != endpoint:
        raise LineError("invalid_url", f"url must be {endpoint}, the batch's endpoint", "url")
    if not isinstance(obj.get("body"), dict):
        raise LineError("missing_required_parameter", "body must be a JSON object", "body")
    return custom_id, obj["body"]


def convert(body: dict, metadata: dict[str, str]) -> LineJob:
    """A chat-completions body → the job it becomes (priority low). Raises LineError."""
    try:
        chat = _ChatBody.model_validate(body)
    except ValidationError as exc:
        raise LineError("invalid_request", describe_validation(exc.errors())) from exc
    # System and developer messages are instructions: the model's prompt has no system turn,
    # so their text leads the user's (most batch files carry one; refusing them failed whole files)
    roles = [m.role for m in chat.messages]
    instructions = [m for m in chat.messages if m.role in ("system", "developer")]
    if [r for r in roles if r not in ("system", "developer")] != ["user"]:
        raise LineError(
            "invalid_request",
            f"messages must be one user message, after any system or developer messages, not "
            f"{roles}: there are no earlier turns",
            "body.messages",
        )
    for m in instructions:
        if not isinstance(m.content, str) and not all(isinstance(p, _Text) for p in m.content):
            message = f"a {m.role} message holds text only"
            raise LineError("invalid_request", message, "body.messages")
    user = next(m for m in chat.messages if m.role == "user")
    parts = [
        _Text(type="text", text=p) if isinstance(p, str) else p
        for m in [*instructions, user]
        for p in ([m.content] if isinstance(m.content, str) else m.content)
    ]
    media = [p for p in parts if not isinstance(p, _Text)]
    if len(media) != 1:
        raise LineError(
            "invalid_request",
            f"a line needs exactly one media part (image_url, input_audio, audio_url, "
            f"video_url or file), not {len(media)}",
            "body.messages",
        )
    prompt = "\n".join(p.text for p in parts if isinstance(p, _Text) and p.text.strip())
    try:
        request = JobCreate.model_validate(_job_fields(chat, prompt, metadata))
    except ValidationError as exc:
        raise LineError("invalid_request", describe_validation(exc.errors())) from exc
    if (problem := grammar_problem(request.response_format.grammar())) is not None:
        message = f"response_format: the schema cannot be compiled: {problem}"
        raise LineError("invalid_request", message, "body.response_format")
    return LineJob(request=request, media=_media_ref(media[0]), model=chat.model)


def _job_fields(chat: _ChatBody, prompt: str, metadata: dict[str, str]) -> dict:
    kwargs = chat.chat_template_kwargs
    generation = {
        "max_tokens": chat.max_completion_tokens or chat.max_tokens,
        "temperature": chat.temperature,
        "top_p": chat.top_p,
        "top_k": chat.top_k,
        "seed": chat.seed,
        "thinking": kwargs.enable_thinking if kwargs is not None else None,
    }
    fields: dict[str, Any] = {
        "task": "ask" if prompt else "caption",
        "prompt": prompt or None,
        "generation": {k: v for k, v in generation.items() if v is not None},
        "priority": "low",
        "metadata": metadata,
    }
    if chat.omnibatch is not None and chat.omnibatch.video is not None:
        fields["video"] = chat.omnibatch.video.model_dump()
    if chat.response_format is not None:
        fields["response_format"] = chat.response_format
    return fields


def _media_ref(part: BaseModel) -> MediaRef:
    if isinstance(part, _Audio):
        return MediaRef(data=_b64(part.input_audio.data, "input_audio.data"))
    if isinstance(part, _File):
        ref = part.file
        if (ref.file_id is None) == (ref.file_data is None):
            raise LineError("invalid_media", "a file part needs one of file_id or file_data")
        if ref.file_id is not None:
            return MediaRef(file_id=ref.file_id)
        if not ref.file_data.startswith("data:"):
            raise LineError("invalid_media", "file.file_data must be a data URL")
        return _url_ref(ref.file_data, "file.file_data")
    url = {_Image: "image_url", _Video: "video_url", _AudioUrl: "audio_url"}[type(part)]
    return _url_ref(getattr(part, url).url, f"{url}.url")


def _url_ref(url: str, where: str) -> MediaRef:
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise LineError("invalid_media", f"{where}: a data URL must be data:<type>;base64,…")
        return MediaRef(data=_b64(payload, where))
    if not url.lower().startswith(("http://", "https://")) or len(url) > MAX_URL:
        raise LineError(
            "invalid_media", f"{where} must be an http(s) URL of at most {MAX_URL} characters"
        )
    return MediaRef(url=url)


def _b64(text: str, where: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LineError("invalid_media", f"{where} is not valid base64") from exc
    if not data:
        raise LineError("invalid_media", f"{where} is empty")
    return data
