"""The OpenAI Batch round trip with the official `openai` client, unmodified, against the
whole service: gateway under uvicorn, a real worker on the demo checkpoint, real Redis."""

from __future__ import annotations

import base64
import json
import time

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.e2e.conftest import KEYS, make_stack

ENDPOINT = "/v1/chat/completions"
VERDICT = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["image", "other"]}},
    "required": ["ok", "kind"],
    "additionalProperties": False,
}
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, demo_cache):
    stack = make_stack(tmp_path_factory.mktemp("e2e-batch"), demo_cache)
    stack.env |= {
        "OMNIBATCH_BATCH_FEED_INTERVAL_S": "0.2",
        "OMNIBATCH_BATCH_MAX_FILE_MB": "2",
        "OMNIBATCH_MAX_CONCURRENT_JOBS": "8",
    }
    stack.start_gateway()
    stack.start_worker()
    yield stack
    stack.stop_all()
    stack.redis.stop()


def client(live, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base}/v1", api_key=KEYS[who], max_retries=0)


def data_url(mime: str, path) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def line(custom_id: str, media: dict, text: str = "Describe it.", **body) -> dict:
    content = [{"type": "text", "text": text}, media]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {
            "model": "nemotron-omni",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
            **body,
        },
    }


def jsonl(lines: list) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def wait(oai: openai.OpenAI, batch_id: str, until, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        batch = oai.batches.retrieve(batch_id)
        if until(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        time.sleep(0.3)


def test_the_openai_client_runs_a_mixed_media_batch(live, media):
    oai = client(live)
    upload = lambda path: oai.files.create(file=(path.name, path.read_bytes()), purpose="user_data")
    pdf_id, video_id = upload(media["document"]).id, upload(media["video"]).id
    audio_b64 = base64.b64encode(media["audio"].read_bytes()).decode()
    png, wav = data_url("image/png", media["image"]), data_url("audio/wav", media["audio"])
    pdf, mp4 = data_url("application/pdf", media["document"]), data_url("video/mp4", media["video"])
    kinds = {  # OpenAI's parts, vLLM's extensions, data URLs and file ids
        "image": {"type": "image_url", "image_url": {"url": png}},
        "audio": {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}},
        "audio_url": {"type": "audio_url", "audio_url": {"url": wav}},
        "pdf": {"type": "file", "file": {"file_id": pdf_id}},
        "pdf_data": {"type": "file", "file": {"file_data": pdf, "filename": "d.pdf"}},
        "video": {"type": "video_url", "video_url": {"url": mp4}},
        "video_file": {"type": "file", "file": {"file_id": video_id}},
    }
    counts = dict.fromkeys(kinds, 6) | {"image": 14}
    lines = [line(f"{kind}-{i}", kinds[kind]) for kind, n in counts.items() for i in range(n)]
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    lines.append(line("json-0", kinds["image"], max_tokens=48, response_format=fmt))
    valid = [ln["custom_id"] for ln in lines]
    two_media = {"role": "user", "content": [kinds["image"], kinds["pdf"]]}
    lines += [
        "{not json",
        line("wrong-url", kinds["image"]) | {"url": "/v1/embeddings"},
        {k: v for k, v in line("x", kinds["image"]).items() if k != "custom_id"},
        line("image-0", kinds["image"]),  # duplicate custom_id
        line("two-media", kinds["image"]) | {"body": {"messages": [two_media]}},
    ]
    batch_file = oai.files.create(file=("batch.jsonl", jsonl(lines)), purpose="batch")
    assert batch_file.purpose == "batch" and batch_file.bytes > 0

    batch = oai.batches.create(
        input_file_id=batch_file.id, endpoint=ENDPOINT, completion_window="24h",
        metadata={"suite": "e2e"},
    )  # fmt: skip
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"suite": "e2e"}
    batch = wait(oai, batch.id, lambda b: b.status in TERMINAL)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == len(lines)
    assert batch.request_counts.completed == len(valid) and batch.request_counts.failed == 5
    assert batch.usage.output_tokens >= len(valid) and batch.model == "nemotron-omni"
    assert batch.id in [b.id for b in oai.batches.list()]

    out = [json.loads(t) for t in oai.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(valid)
    for o in out:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        completion = ChatCompletion.model_validate(o["response"]["body"])
        assert completion.choices[0].message.role == "assistant"
        limit = 48 if o["custom_id"].startswith("json-") else 2
        assert 1 <= completion.usage.completion_tokens <= limit
        assert completion.model == "demo-random"
    for o in (o for o in out if o["custom_id"].startswith("json-")):
        choice = o["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), VERDICT)
    kinds_done = {o["custom_id"]: o["response"]["body"]["omnibatch"]["usage"] for o in out}
    assert kinds_done["pdf-0"]["pages"] == 1 and kinds_done["audio-0"]["audio_seconds"] > 0
    assert kinds_done["video_file-0"]["video_seconds"] > 0 and kinds_done["image-0"]["images"] == 1

    errors = [json.loads(t) for t in oai.files.content(batch.error_file_id).text.splitlines()]
    codes = sorted(e["error"]["code"] for e in errors)
    assert codes == sorted(
        ["invalid_json_line", "invalid_url", "missing_required_parameter",
         "duplicate_custom_id", "invalid_request"]
    )  # fmt: skip


def test_a_running_batch_is_cancelled_and_its_jobs_stop(live, media):
    oai = client(live)
    long_video = (media["long_video"].name, media["long_video"].read_bytes())
    video_id = oai.files.create(file=long_video, purpose="user_data").id
    part = {"type": "file", "file": {"file_id": video_id}}
    chunked = {"video": {"fps": 2, "chunk_s": 1.0}}
    lines = [line(f"v{i}", part, max_tokens=64, omnibatch=chunked) for i in range(12)]
    batch_file = oai.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch")
    batch = oai.batches.create(
        input_file_id=batch_file.id, endpoint=ENDPOINT, completion_window="24h"
    )
    with live.client() as c:

        def jobs() -> list[dict]:
            data = c.get("/v1/jobs", params={"limit": 100}).json()["data"]
            return [j for j in data if j["metadata"].get("batch_id") == batch.id]

        deadline = time.monotonic() + 60
        while not any(j["status"] == "running" for j in jobs()):
            assert time.monotonic() < deadline, "no job of the batch started"
            time.sleep(0.2)
        cancelling = oai.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        batch = wait(oai, batch.id, lambda b: b.status in TERMINAL, timeout=60)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        ended = jobs()
    assert ended and all(j["status"] in ("cancelled", "succeeded") for j in ended), ended
    stopped = [j for j in ended if j["status"] == "cancelled" and j["started_at"]]
    assert stopped, "a running job stopped"
    assert batch.request_counts.completed < len(lines)
    errors = [json.loads(t) for t in oai.files.content(batch.error_file_id).text.splitlines()]
    assert errors and {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    done = len(errors) + batch.request_counts.completed
    assert done == len(lines), "every line is in the output or the error file"


def test_a_file_too_large_is_refused(live):
    oai = client(live)
    big = b'{"custom_id": "x", "pad": "' + b"x" * (3 << 20) + b'"}\n'
    with pytest.raises(openai.APIStatusError) as err:
        oai.files.create(file=("big.jsonl", big), purpose="batch")
    assert err.value.status_code == 413
    assert err.value.body["code"] == "payload_too_large"


def test_another_key_cannot_see_a_batch(live):
    alice, bob = client(live, "alice"), client(live, "bob")
    batch_file = alice.files.create(file=("one.jsonl", jsonl(["{not json"])), purpose="batch")
    batch = alice.batches.create(
        input_file_id=batch_file.id, endpoint=ENDPOINT, completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(batch_file.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(input_file_id=batch_file.id, endpoint=ENDPOINT, completion_window="24h")
    assert batch.id not in [b.id for b in bob.batches.list()]
    failed = wait(alice, batch.id, lambda b: b.status in TERMINAL, timeout=30)
    assert failed.status == "failed" and failed.errors.data[0].code == "invalid_json_line"
    with pytest.raises(openai.BadRequestError):
        alice.batches.create(
            input_file_id=batch_file.id, endpoint="/v1/embeddings", completion_window="24h"
        )
