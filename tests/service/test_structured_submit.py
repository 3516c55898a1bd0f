"""`response_format` at submit: OpenAI's shapes are accepted and stored as given; a schema the
grammar library cannot compile, or a malformed format, is a 422 before anything is queued."""

from __future__ import annotations

import json

import pytest
from rq import Queue

from contract import jobstore
from tests.service.conftest import png_bytes

pytestmark = pytest.mark.anyio

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def form(request: dict):
    return {
        "file": ("a.png", png_bytes(), "application/octet-stream"),
        "request": (None, json.dumps(request), "application/json"),
    }


def json_schema(schema: dict, **extra) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **extra}}


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "text"},
        {"type": "json_object"},
        json_schema(PERSON, strict=True, description="who is in the picture"),
        json_schema({"type": "array", "uniqueItems": True}),  # strict false: ignored keyword
    ],
)
async def test_formats_are_accepted_and_stored(api, redis_client, fmt):
    resp = await api.post("/v1/jobs", files=form({"response_format": fmt}))
    assert resp.status_code == 202, resp.text
    rec = jobstore.load(redis_client, resp.json()["id"])
    assert rec.request.response_format.model_dump(exclude_none=True) == fmt


async def test_default_is_text(api, redis_client):
    resp = await api.post("/v1/jobs", files=form({"task": "caption"}))
    rec = jobstore.load(redis_client, resp.json()["id"])
    assert rec.request.response_format.type == "text"
    assert rec.request.response_format.grammar() is None


@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        (json_schema({"type": "strin"}), "Invalid type"),
        (json_schema({"type": "array", "uniqueItems": True}, strict=True), "uniqueItems"),
        (json_schema({"type": "object", "not": {"required": ["a"]}}, strict=True), "not"),
        (json_schema({"$ref": "#/$defs/missing"}), "missing"),
        (json_schema(PERSON) | {"json_schema": {"schema": PERSON}}, "name"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "xml"}, "response_format"),
        ({}, "discriminator 'type'"),  # the tag is required, as the document says
        (json_schema(PERSON, strict=0), "strict"),  # a boolean, not a number
        ({"type": "json_object", "schema": PERSON}, "schema"),
    ],
)
async def test_unusable_formats_are_refused(api, redis_client, fmt, says):
    resp = await api.post("/v1/jobs", files=form({"response_format": fmt}))
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "invalid_request" and says in body["detail"], body
    assert not any(Queue(q, connection=redis_client).count for q in ("jobs:normal", "jobs:high"))
    assert not list((api.app_state.storage.root / "inputs").glob("*"))
