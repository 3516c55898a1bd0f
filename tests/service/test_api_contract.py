"""Edges of the REST contract a black-box tester found: deeply nested JSON, the empty cursor,
`Allow` on 405 and OPTIONS, the long-poll maximum, the JSON door's own size cap, and the
OpenAPI document saying all of it (the schemathesis run checks the rest)."""

from __future__ import annotations

import json

import pytest

from service.upload import JSON_BODY_MAX
from tests.service.conftest import png_bytes, serve_app
from tests.service.test_submit import assert_problem, form

pytestmark = pytest.mark.anyio
JOB = "/v1/jobs/job_0123456789abcdef0123456789ab"


def nested(depth: int) -> str:
    return '{"generation": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [1000, 100_000])
async def test_deeply_nested_json_is_invalid_request_on_both_doors(api, depth):
    json_door = await api.post(
        "/v1/jobs", content=nested(depth), headers={"content-type": "application/json"}
    )
    upload_door = await api.post("/v1/jobs", files=form(png_bytes(), nested(depth)))
    for resp in (json_door, upload_door):
        assert "recursion limit" in assert_problem(resp, 422, "invalid_request")["detail"]
    assert not any((api.app_state.storage.root / "inputs").glob("*/*"))


async def test_empty_cursor_is_the_first_page(api):
    ids = [(await api.post("/v1/jobs", files=form(png_bytes()))).json()["id"] for _ in range(2)]
    page = (await api.get("/v1/jobs", params={"cursor": ""})).json()
    assert [j["id"] for j in page["data"]] == ids[::-1]
    assert_problem(await api.get("/v1/jobs", params={"cursor": "job_x"}), 422, "invalid_request")


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        (JOB, "DELETE, GET, OPTIONS"),
        ("/v1/jobs", "GET, OPTIONS, POST"),
        ("/healthz", "GET, OPTIONS"),
    ],
)
async def test_options_and_405_name_every_method_of_the_path(api, path, allow):
    resp = await api.options(path)
    assert resp.status_code == 204 and resp.headers["allow"] == allow
    resp = await api.put(path)
    assert_problem(resp, 405, "invalid_request")
    assert resp.headers["allow"] == allow


async def test_wait_over_60_is_refused(api):
    job = (await api.post("/v1/jobs", files=form(png_bytes()))).json()["id"]
    assert_problem(await api.get(f"/v1/jobs/{job}", params={"wait": 61}), 422, "invalid_request")
    assert (await api.get(f"/v1/jobs/{job}", params={"wait": 0.1})).status_code == 200


async def test_json_door_names_its_own_size_cap(api):
    big = json.dumps({"input": {"url": "http://example.com/a"}, "prompt": "x" * JSON_BODY_MAX})
    headers = {"content-type": "application/json"}
    for extra in ({}, {"content-length": str(len(big))}):  # streamed, and declared up front
        resp = await api.post("/v1/jobs", content=big.encode(), headers=headers | extra)
        assert assert_problem(resp, 413, "payload_too_large")["detail"] == (
            "a JSON body is limited to 256 KiB"
        )


async def test_openapi_document_states_the_submit_contract(api):
    doc = (await api.get("/openapi.json")).json()
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert {"202", "200", "400", "408", "413", "415", "422", "429", "503"} <= set(
        submit["responses"]
    )
    content = submit["requestBody"]["content"]
    schemas = doc["components"]["schemas"]
    url_door = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schemas[url_door]["required"] == ["input"]
    assert schemas[url_door]["properties"]["input"] == {"$ref": "#/components/schemas/InputSpec"}
    form_part = content["multipart/form-data"]["schema"]["properties"]["request"]["$ref"]
    assert "input" not in schemas[form_part.rsplit("/", 1)[1]]["properties"]
    formats = schemas[url_door]["properties"]["response_format"]["oneOf"]
    for ref in formats:  # the discriminator's tag: `{}` is no response_format
        assert "type" in schemas[ref["$ref"].rsplit("/", 1)[1]]["required"], ref
    wait = next(p for p in doc["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"]
                if p["name"] == "wait")  # fmt: skip
    assert wait["schema"]["maximum"] == 60


@pytest.mark.parametrize(
    ("secret", "status"),
    [("whsec_iC=", 422), ("whsec_a", 422), ("whsec_", 422), ("whsec_c2VjcmV0LW9mLWpvYg==", 202)],
)
async def test_webhook_secret_must_be_base64_signing_can_decode(settings, secret, status):
    """A secret the delivery worker cannot decode would fail every delivery, silently."""
    webhook = {"url": "http://127.0.0.1:9/hook", "secret": secret}
    async with serve_app(settings(allow_private_urls=["127.0.0.1/32"])) as api:
        resp = await api.post("/v1/jobs", files=form(png_bytes(), {"webhook": webhook}))
    assert resp.status_code == status, resp.text
    if status == 422:
        assert "webhook.secret" in resp.json()["detail"]

