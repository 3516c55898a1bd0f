"""Structured output through the whole service: the gateway refuses a schema the grammar
library cannot compile, the worker process answers JSON that matches each schema of the set
(sampled at temperature 1 by the random demo model, the hardest case), and a constrained job
that would run long is cancelled."""

from __future__ import annotations

import json

import jsonschema

from tests.engine.structured_schemas import SCHEMAS, UNBOUNDED


def _format(schema: dict) -> dict:
    spec = {"name": "e2e", "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": spec}


def test_structured_job_round_trip(stack, media):
    bad = {"response_format": _format({"type": "array", "uniqueItems": True})}
    with stack.client() as c, media["image"].open("rb") as f:
        resp = c.post("/v1/jobs", files={"file": ("a.png", f)}, data={"request": json.dumps(bad)})
    assert resp.status_code == 422 and resp.json()["code"] == "invalid_request"
    assert "uniqueItems" in resp.json()["detail"]

    stack.start_worker()
    gen = {"max_tokens": 400, "temperature": 1.0, "seed": 11}
    jobs = {
        name: stack.submit(media["image"], response_format=_format(schema), generation=gen)
        for name, schema in SCHEMAS.items()
    }
    long_id = stack.submit(
        media["image"], response_format=_format(UNBOUNDED),
        generation={"max_tokens": 20000, "temperature": 1.0},
    )  # fmt: skip

    assert len(jobs) >= 20
    for name, job_id in jobs.items():
        assert stack.finished(job_id)["status"] == "succeeded", name
        with stack.client() as c:
            output = c.get(f"/v1/jobs/{job_id}/result").json()["output"]
        assert output["finish_reason"] == "stop", name
        jsonschema.validate(output["json"], SCHEMAS[name])

    stack.wait_for(long_id, lambda j: j["progress"]["stage"] == "generating")
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{long_id}/cancel").status_code == 202
    job = stack.finished(long_id)
    assert job["status"] == "cancelled" and job["usage"]["output_tokens"] < 20000
