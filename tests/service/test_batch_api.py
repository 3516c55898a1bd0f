"""`/v1/files` and `/v1/batches` requests answered in OpenAI's shapes, every refusal a
problem+json, and one key never seeing another's files or batches."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import pytest

from service.batches import filestore
from tests.service.conftest import AUTH_B, png_bytes, serve_app
from tests.service.test_submit import assert_problem

pytestmark = pytest.mark.anyio

ENDPOINT = "/v1/chat/completions"
PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def chat_line(custom_id: str, *parts: dict, **body) -> dict:
    """One batch input line; the parts default to a question about a PNG data URL."""
    parts = parts or (
        {"type": "text", "text": "what colour?"},
        {"type": "image_url", "image_url": {"url": PNG_URL}},
    )
    messages = [{"role": "user", "content": list(parts)}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "nemotron-omni", "messages": messages, "max_tokens": 4, **body},
    }


def jsonl(lines: list[dict | str]) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


async def upload(api, data: bytes, purpose: str = "batch", name: str = "in.jsonl") -> dict:
    resp = await api.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def create_batch(api, file_id: str, **extra) -> dict:
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"} | extra
    resp = await api.post("/v1/batches", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_file_upload_read_list_delete(api):
    data = jsonl([chat_line("a")])
    obj = await upload(api, data)
    assert obj["object"] == "file" and obj["purpose"] == "batch" and obj["bytes"] == len(data)
    assert obj["filename"] == "in.jsonl" and obj["status"] == "processed"
    assert obj["id"].startswith("file-") and obj["expires_at"] > obj["created_at"]
    assert (await api.get(f"/v1/files/{obj['id']}")).json() == obj
    content = await api.get(f"/v1/files/{obj['id']}/content")
    assert content.status_code == 200 and content.content == data
    media = await upload(api, png_bytes(), "user_data", "a.png")
    listed = (await api.get("/v1/files")).json()
    assert [f["id"] for f in listed["data"]] == [media["id"], obj["id"]]  # newest first
    assert listed["object"] == "list" and listed["has_more"] is False
    page = (await api.get("/v1/files", params={"limit": 1, "order": "asc"})).json()
    assert [f["id"] for f in page["data"]] == [obj["id"]] and page["has_more"] is True
    rest = (await api.get("/v1/files", params={"after": obj["id"], "order": "asc"})).json()
    assert [f["id"] for f in rest["data"]] == [media["id"]]
    only = (await api.get("/v1/files", params={"purpose": "user_data"})).json()
    assert [f["id"] for f in only["data"]] == [media["id"]]
    assert (await api.get("/v1/files", params={"after": ""})).json() == listed  # first page
    assert_problem(await api.get("/v1/files", params={"after": "x"}), 422, "invalid_request")

    deleted = await api.delete(f"/v1/files/{obj['id']}")
    assert deleted.json() == {"id": obj["id"], "object": "file", "deleted": True}
    assert_problem(await api.get(f"/v1/files/{obj['id']}"), 404, "not_found")
    root = api.app_state.storage.root
    assert not filestore.content_path(root, obj["id"]).parent.exists()


async def test_file_refusals(settings):
    async with serve_app(settings(batch_max_file_mb=1, max_upload_mb=1)) as api:
        big = b'{"a": "' + b"x" * (1 << 20) + b'"}\n'
        cases = [
            ({"file": ("a.jsonl", b"{}")}, {}, 400),  # no purpose
            ({"file": ("a.jsonl", b"{}")}, {"purpose": "fine-tune"}, 400),
            ({"file": ("a.jsonl", b"")}, {"purpose": "batch"}, 400),
            ({"file": ("a.jsonl", png_bytes())}, {"purpose": "batch"}, 400),  # not JSONL
            ({"purpose": (None, "batch")}, {}, 400),  # no file
            ({"file": ("a.jsonl", b"{}"), "extra": (None, "1")}, {"purpose": "batch"}, 400),
            ({"file": ("a.jsonl", big)}, {"purpose": "batch"}, 413),
            ({"file": ("a.bin", big)}, {"purpose": "user_data"}, 413),
        ]
        for files, data, status in cases:
            resp = await api.post("/v1/files", files=files, data=data)
            code = "payload_too_large" if status == 413 else "invalid_request"
            assert_problem(resp, status, code)
        resp = await api.post("/v1/files", json={"purpose": "batch"})
        assert_problem(resp, 415, "unsupported_media_type")
        assert not list((api.app_state.storage.root / "files").glob("*/*"))


async def test_batch_create_refusals(api):
    batch_file = (await upload(api, jsonl([chat_line("a")])))["id"]
    media = (await upload(api, png_bytes(), "user_data"))["id"]
    base = {"input_file_id": batch_file, "endpoint": ENDPOINT, "completion_window": "24h"}
    for change, status, says in [
        ({"endpoint": "/v1/embeddings"}, 400, "/v1/chat/completions"),
        ({"completion_window": "48h"}, 400, "24h"),
        ({"input_file_id": media}, 400, "purpose 'batch'"),
        ({"input_file_id": "file-" + "0" * 28}, 404, "no file"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 422, "metadata"),
    ]:
        resp = await api.post("/v1/batches", json=base | change)
        body = assert_problem(resp, status, "not_found" if status == 404 else "invalid_request")
        assert says in body["detail"], body


async def test_batch_object_list_and_other_keys(settings):
    async with serve_app(settings(batch_feed_interval_s=30)) as api:
        file_id = (await upload(api, jsonl([chat_line("a")])))["id"]
        first = await create_batch(api, file_id, metadata={"run": "1"})
        assert first["object"] == "batch" and first["status"] == "validating"
        assert first["endpoint"] == ENDPOINT and first["completion_window"] == "24h"
        assert first["expires_at"] == first["created_at"] + 24 * 3600
        assert first["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
        assert first["metadata"] == {"run": "1"} and first["input_file_id"] == file_id
        ids = [first["id"]] + [(await create_batch(api, file_id))["id"] for _ in range(2)]
        page = (await api.get("/v1/batches", params={"limit": 2})).json()
        assert [b["id"] for b in page["data"]] == ids[:0:-1] and page["has_more"] is True
        assert page["first_id"] == ids[2] and page["last_id"] == ids[1]
        rest = (await api.get("/v1/batches", params={"after": page["last_id"]})).json()
        assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
        assert_problem(await api.get("/v1/batches", params={"after": "x"}), 422, "invalid_request")
        first_page = (await api.get("/v1/batches", params={"after": "", "limit": 2})).json()
        assert [b["id"] for b in first_page["data"]] == ids[:0:-1]  # empty cursor: first page

        other = {"headers": AUTH_B}
        for method, path in [
            ("GET", f"/v1/batches/{ids[0]}"),
            ("POST", f"/v1/batches/{ids[0]}/cancel"),
            ("GET", f"/v1/files/{file_id}"),
            ("GET", f"/v1/files/{file_id}/content"),
            ("DELETE", f"/v1/files/{file_id}"),
        ]:
            assert_problem(await api.request(method, path, **other), 404, "not_found")
        assert (await api.get("/v1/batches", **other)).json()["data"] == []
        assert (await api.get("/v1/files", **other)).json()["data"] == []
        body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
        assert_problem(await api.post("/v1/batches", json=body, **other), 404, "not_found")
        assert (await api.get(f"/v1/batches/{ids[0]}")).json()["status"] == "validating"


async def test_openapi_shows_the_batch_and_file_schemas(api):
    spec = (await api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert {"Batch", "BatchCreate", "BatchList", "FileObject", "FileList"} <= set(schemas)
    assert set(schemas["Batch"]["properties"]["status"]["$ref"].split("/")[-1:]) == {"BatchStatus"}
    assert "multipart/form-data" in spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert {"/v1/batches/{batch_id}/cancel", "/v1/files/{file_id}/content"} <= set(spec["paths"])
    create = schemas["BatchCreate"]["properties"]
    assert create["endpoint"]["enum"] == [ENDPOINT]
    assert create["completion_window"]["enum"] == ["24h"]
    assert re.fullmatch(create["input_file_id"]["pattern"], "file-" + "0" * 28)
    for path, methods in spec["paths"].items():
        if path.startswith(("/v1/files", "/v1/batches")):
            for op in methods.values():  # every refusal, validation's 422 too, is problem+json
                refusals = {code: r for code, r in op["responses"].items() if code >= "400"}
                assert {"401", "422", "503"} <= set(refusals), path
                assert all("application/problem+json" in r["content"] for r in refusals.values())
    for path, prefix in [("/v1/files", "file-"), ("/v1/batches", "batch_")]:
        after = next(p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "after")
        pattern = after["schema"]["anyOf"][0]["pattern"]
        assert re.fullmatch(pattern, "") and re.fullmatch(pattern, prefix + "0" * 28), path


async def test_files_go_when_their_time_has_passed(settings, redis_client):
    async with serve_app(settings(file_ttl_s=1, housekeeping_interval_s=0.1)) as api:
        obj = await upload(api, png_bytes(), "user_data", "a.png")
        assert obj["expires_at"] == obj["created_at"] + 1
        path = filestore.content_path(api.app_state.storage.root, obj["id"])
        deadline = time.monotonic() + 10
        while path.exists():
            assert time.monotonic() < deadline, "the file outlived its time"
            await asyncio.sleep(0.05)
        assert_problem(await api.get(f"/v1/files/{obj['id']}"), 404, "not_found")
        assert (await api.get("/v1/files")).json()["data"] == []
        assert redis_client.zcard(filestore.EXPIRY_KEY) == 0
        assert redis_client.zcard(filestore.owner_files_key("alpha")) == 0
