"""schemathesis hooks for tests/service/test_openapi_schemathesis.py (loaded by SCHEMATHESIS_HOOKS).

They supply, per request, what no OpenAPI document can promise and the contract refuses by
design, so that a refusal left over is a real mismatch. Schema-valid (positive) cases are
touched for that; a negative one is refused for its own flaw, and is touched only where the
form encoder would lose the flaw on the way; one whose body has no flaw after all (schemathesis
breaks one branch of an `anyOf` and leaves another met) is dropped (`filter_case`):
- A multipart field whose value is null or an empty list gets no part at all (requests skips
  both), so a negative form whose flaw is such a field (an extra property, seen in a fresh-
  clone CI run as ST201 on `POST /v1/files`) would reach the API valid: the value is sent
  as an empty part instead, still a flaw (an unknown part, a purpose outside its enum, an
  empty file).
- `input.url` / `webhook.url`: a generated URL names a host that does not exist; it is
  pointed at the test's receiver (`OMNIBATCH_TEST_RECEIVER`, allow-listed), which serves
  a PNG.
- `Idempotency-Key`: reusing a key with a different request is refused (422); each request
  gets a fresh one.
- `video.end_s` must be greater than `video.start_s`, a rule between two fields that JSON
  Schema cannot state (VideoOptions' description does): an `end_s` at or before `start_s`
  is dropped.
- `response_format.json_schema.schema` may be any object in the document, but one the grammar
  library cannot compile (`strict: true` with a keyword it does not implement, a keyword
  of the wrong type) is refused with a 422 (docs/api.md, "Structured output"): such a schema
  becomes `{}` (any JSON), decided by the gateway's own check (`contract.json_grammar`).
- A batch input file (`POST /v1/files`, purpose `batch`) must be JSONL, which the document
  cannot say of a file: its bytes become one request line about the receiver's PNG.
- `input_file_id` (`POST /v1/batches`) must name a batch file of the caller's: it is pointed
  at the newest one the run uploaded and has not deleted (none yet: left as generated, 404),
  so that batches are created, read and cancelled.
"""

from __future__ import annotations

import json
import os
import uuid

import jsonschema
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.transport.serialization import Binary

from contract.json_grammar import grammar_problem, json_grammar

RECEIVER = os.environ.get("OMNIBATCH_TEST_RECEIVER", "")
_IMAGE = {"type": "image_url", "image_url": {"url": f"{RECEIVER}/input"}}
_LINE = {
    "custom_id": "line-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "nemotron-omni", "messages": [{"role": "user", "content": [_IMAGE]}]},
}
BATCH_JSONL = json.dumps(_LINE) + "\n"  # text, so that it stays schema-valid as a string
batch_files: list[str] = []  # ids of the batch files this run uploaded and has not deleted


def _make_valid(request: object) -> None:
    if not isinstance(request, dict):
        return
    for field in ("input", "webhook"):
        if isinstance(request.get(field), dict):
            request[field]["url"] = f"{RECEIVER}/{field}"
    _compilable_schema(request.get("response_format"))
    video = request.get("video")
    if not isinstance(video, dict) or None in (video.get("start_s"), video.get("end_s")):
        return
    if video["end_s"] <= video["start_s"]:
        del video["end_s"]


def _compilable_schema(response_format: object) -> None:
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        return
    if grammar_problem(json_grammar(spec["schema"], bool(spec.get("strict")))) is not None:
        spec["schema"] = {}


def _flaw_kept_in_form(case):
    if case.media_type == "multipart/form-data" and isinstance(case.body, dict):
        for name, value in case.body.items():
            if value is None or value == []:
                case.body[name] = ""
    return case


_body_validators: dict = {}  # (path, media type) -> its body schema's validator


def _valid_body(case) -> bool:
    """Whether the case's body satisfies its media type's schema in the document (file parts
    judged as the strings the document describes; schemathesis itself does not judge bodies
    with bytes in them again)."""
    content = case.operation.definition.raw.get("requestBody", {}).get("content", {})
    schema = content.get(case.media_type, {}).get("schema")
    if schema is None:  # nothing to judge by: the case stays as generated
        return False
    key = (case.path, case.media_type)
    if key not in _body_validators:
        root = {**schema, "components": case.operation.schema.raw_schema.get("components", {})}
        _body_validators[key] = jsonschema.Draft202012Validator(root)
    return _body_validators[key].is_valid(_as_text(case.body))


def _as_text(value):
    """value with bytes (schemathesis's Binary for `format: binary` too) as latin-1 text."""
    if isinstance(value, Binary):
        value = value.data
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {name: _as_text(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    return value


@schemathesis.hook
def filter_case(context, case):
    """Drops a case generated to break the body schema whose body meets it after all:
    schemathesis's negative generator can break one branch of an `anyOf` and leave another
    met (seen as ST201 on `POST /v1/jobs`: a `request` of `{"task": "transcribe"}` generated
    against the branch that requires a `prompt`), and the API rightly accepts it."""
    meta = case.meta
    if meta is None or not meta.is_negative_at(ParameterLocation.BODY) or case.body is None:
        return True
    others = [info for loc, info in meta.components.items() if loc != ParameterLocation.BODY]
    if any(info.mode.is_negative for info in others):
        return True
    return not _valid_body(case)


@schemathesis.hook
def map_case(context, case):
    if case.method.upper() != "POST" or case.meta is None:
        return case
    if not case.meta.generation.mode.is_positive:
        return _flaw_kept_in_form(case)
    body = case.body if isinstance(case.body, dict) else {}
    if case.path == "/v1/files" and body.get("purpose") == "batch":
        body["file"] = BATCH_JSONL
    elif case.path == "/v1/batches" and "input_file_id" in body and batch_files:
        body["input_file_id"] = batch_files[-1]
    elif case.path == "/v1/jobs":
        _make_valid(body)
        _make_valid(body.get("request"))
        for name in list(case.headers or {}):
            if name.lower() == "idempotency-key":
                case.headers[name] = uuid.uuid4().hex
    return case


@schemathesis.hook
def after_call(context, case, response):
    if response.status_code != 200:
        return
    if case.method.upper() == "POST" and case.path == "/v1/files":
        uploaded = response.json()
        if uploaded["purpose"] == "batch":
            batch_files.append(uploaded["id"])
    elif case.method.upper() == "DELETE" and case.path == "/v1/files/{file_id}":
        deleted = case.path_parameters.get("file_id")
        batch_files[:] = [file_id for file_id in batch_files if file_id != deleted]
