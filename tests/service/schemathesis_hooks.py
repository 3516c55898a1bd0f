"""schemathesis hooks for tests/service/test_openapi_contract.py (loaded by SCHEMATHESIS_HOOKS).

They supply, per request, what no OpenAPI document can promise and the contract refuses by
design, so that a refusal left over is a real mismatch. Only schema-valid (positive) cases
are touched: a negative one is refused for its own flaw.
- `input.url` / `webhook.url`: a generated URL names a host that does not exist; it is
  pointed at the test's receiver (`OMNIBATCH_TEST_RECEIVER`, allow-listed), which serves
  a PNG.
- `Idempotency-Key`: reusing a key with a different request is refused (422); each request
  gets a fresh one.
- `video.end_s` must be greater than `video.start_s`, a rule between two fields that JSON
  Schema cannot state (VideoOptions' description does): an `end_s` at or before `start_s`
  is dropped.
"""

from __future__ import annotations

import os
import uuid

import schemathesis

RECEIVER = os.environ.get("OMNIBATCH_TEST_RECEIVER", "")


def _make_valid(request: object) -> None:
    if not isinstance(request, dict):
        return
    for field in ("input", "webhook"):
        if isinstance(request.get(field), dict):
            request[field]["url"] = f"{RECEIVER}/{field}"
    video = request.get("video")
    if not isinstance(video, dict) or None in (video.get("start_s"), video.get("end_s")):
        return
    if video["end_s"] <= video["start_s"]:
        del video["end_s"]


@schemathesis.hook
def map_case(context, case):
    if case.method.upper() != "POST" or case.path != "/v1/jobs":
        return case
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if isinstance(case.body, dict):
        _make_valid(case.body)
        _make_valid(case.body.get("request"))
    for name in list(case.headers or {}):
        if name.lower() == "idempotency-key":
            case.headers[name] = uuid.uuid4().hex
    return case
