"""One batch input line → a job request and its media reference (service/batches/lines.py):
OpenAI's content parts and vLLM's extensions map onto a job; what a job cannot do is a line
error with a code, never a crash."""

from __future__ import annotations

import base64
import json

import pytest

from contract.schemas import Priority, Task
from service.batches.lines import LineError, convert, parse_line
from tests.service.conftest import png_bytes, wav_bytes

ENDPOINT = "/v1/chat/completions"
PNG = png_bytes()
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
META = {"batch_id": "batch_x", "custom_id": "c1"}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


IMAGE = {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}}


def test_text_and_image_become_an_ask_job_at_low_priority():
    body = {
        "model": "nemotron",
        "messages": user(text("What colour"), IMAGE, text("is it?")),
        "max_completion_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 3,
        "chat_template_kwargs": {"enable_thinking": True},
        "omnibatch": {"video": {"fps": 2, "max_frames": 8}},
    }
    job = convert(body, META)
    req = job.request
    assert req.task is Task.ask and req.prompt == "What colour\nis it?"
    assert req.priority is Priority.low and req.metadata == META
    g = req.generation
    assert (g.max_tokens, g.temperature, g.top_p, g.top_k, g.seed, g.thinking) == (
        7, 0.5, 0.9, 20, 3, True
    )  # fmt: skip
    assert req.video.fps == 2 and req.video.max_frames == 8
    assert job.media.data == PNG and job.media.url is None and job.model == "nemotron"


def test_system_and_developer_text_leads_the_prompt():
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "developer", "content": [text("One sentence.")]},
        *user(IMAGE, text("What is shown?")),
    ]
    req = convert({"messages": messages}, META).request
    assert req.task is Task.ask
    assert req.prompt == "Answer in French.\nOne sentence.\nWhat is shown?"


def test_defaults_follow_the_jobs_api_and_no_text_means_caption():
    job = convert({"messages": user(IMAGE), "max_tokens": 5}, META)
    assert job.request.task is Task.caption and job.request.prompt is None
    assert job.request.generation.max_tokens == 5
    assert job.request.generation.temperature == 0.2  # /v1/jobs' default
    assert job.request.response_format.type == "text"


@pytest.mark.parametrize(
    ("part", "expect"),
    [
        ({"type": "video_url", "video_url": {"url": "https://e.example/a.mp4"}}, "url"),
        ({"type": "audio_url", "audio_url": {"url": "http://e.example/a.mp3"}}, "url"),
        ({"type": "image_url", "image_url": {"url": "https://e.example/a.png"}}, "url"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "data"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "file_id"),
        ({"type": "file", "file": {"file_data": "", "filename": "a.pdf"}}, "data"),
    ],
)
def test_each_media_part_names_its_media(part, expect):
    wav = base64.b64encode(wav_bytes()).decode()
    if part["type"] == "input_audio":
        part["input_audio"]["data"] = wav
    if part["type"] == "file" and "file_data" in part["file"]:
        part["file"]["file_data"] = "data:application/pdf;base64," + wav
    media = convert({"messages": user(text("hi"), part)}, META).media
    assert [k for k in ("url", "data", "file_id") if getattr(media, k) is not None] == [expect]
    if expect == "data":
        assert media.data == wav_bytes()


def test_response_format_passes_through_and_a_bad_schema_is_a_line_error():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    job = convert({"messages": user(IMAGE), "response_format": fmt}, META)
    assert job.request.response_format.model_dump(exclude_none=True) == fmt
    fmt["json_schema"]["schema"] = {"type": "strin"}
    with pytest.raises(LineError) as err:
        convert({"messages": user(IMAGE), "response_format": fmt}, META)
    assert err.value.code == "invalid_request" and "cannot be compiled" in err.value.message


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        ({"messages": user(IMAGE, IMAGE)}, "invalid_request", "file), not 2"),
        ({"messages": user(text("only words"))}, "invalid_request", "file), not 0"),
        ({"messages": "hello"}, "invalid_request", "messages"),
        (
            {"messages": [*user(IMAGE), {"role": "assistant", "content": "a cat"}, *user(IMAGE)]},
            "invalid_request",
            "one user message",
        ),
        (
            {"messages": [{"role": "system", "content": [IMAGE]}, *user(IMAGE)]},
            "invalid_request",
            "text only",
        ),
        ({"messages": user(IMAGE), "tools": []}, "invalid_request", "tools: Extra inputs"),
        ({"messages": user(IMAGE), "stream": True}, "invalid_request", "stream: "),
        ({"messages": user(IMAGE), "n": 2}, "invalid_request", "n: Input should be 1"),
        ({"messages": user(IMAGE), "max_tokens": 10**6}, "invalid_request", "max_tokens"),
        ({"messages": user(IMAGE), "temperature": 3}, "invalid_request", "temperature"),
        ({"messages": user({"type": "input_image", "x": 1})}, "invalid_request", "input_image"),
        (
            {"messages": user({"type": "image_url", "image_url": {"url": "ftp://h/a.png"}})},
            "invalid_media",
            "http(s)",
        ),
        (
            {"messages": user({"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}})},
            "invalid_media",
            "base64",
        ),
        (
            {"messages": user({"type": "input_audio", "input_audio": {"data": "!", "format": ""}})},
            "invalid_media",
            "not valid base64",
        ),
        (
            {"messages": user({"type": "file", "file": {"filename": "a.pdf"}})},
            "invalid_media",
            "one of file_id or file_data",
        ),
    ],
)
def test_what_a_job_cannot_do_is_a_line_error(body, code, says):
    with pytest.raises(LineError) as err:
        convert(body, META)
    assert err.value.code == code and says in err.value.message, err.value.message


def line(**fields) -> bytes:
    base = {"custom_id": "c1", "method": "POST", "url": ENDPOINT, "body": {"messages": []}}
    return json.dumps({k: v for k, v in (base | fields).items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json_line"),
        (b"[1, 2]", "invalid_json_line"),
        (line(custom_id=None), "missing_required_parameter"),
        (line(custom_id=""), "missing_required_parameter"),
        (line(custom_id="x" * 513), "invalid_request"),
        (line(method="GET"), "invalid_method"),
        (line(url="/v1/embeddings"), "invalid_url"),
        (line(body="text"), "missing_required_parameter"),
        (line(extra=1), "invalid_request"),
    ],
)
def test_envelope_errors(raw, code):
    with pytest.raises(LineError) as err:
        parse_line(raw, ENDPOINT)
    assert err.value.code == code


def test_a_good_envelope():
    assert parse_line(line(), ENDPOINT) == ("c1", {"messages": []})
