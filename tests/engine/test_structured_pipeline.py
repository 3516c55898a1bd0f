"""Structured output through Pipeline.submit and `omnibatch run` on the demo checkpoint (CPU):
`output.json` for a one-call result and for the summarize pass, `segments[i].json` for
chunks (pages go the same way), `finish_reason` and a warning when max_tokens cut the JSON short."""

from __future__ import annotations

import io
import json

import jsonschema
import numpy as np
import pytest
from PIL import Image

from cli.main import build_parser
from contract.schemas import JobCreate
from tests.engine.structured_schemas import SCHEMAS, UNBOUNDED
from tests.media.corpus import write_video
from workers.local_run import request_from_flags, run_all
from workers.outcome import output_of
from workers.pipeline import DEMO_WARNING, TRUNCATED_WARNING, Pipeline

# short answers: the demo model decodes a prompt of a few hundred media tokens slowly on CPU;
# tests/engine/test_structured.py covers the schemas themselves
INVOICE = SCHEMAS["defs_ref"]
CHAPTERS = SCHEMAS["chapters"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        p = Pipeline.load(None, "cpu")
    yield p
    p.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(d / "a.png")
    write_video(str(d / "a.mp4"), frames=16, fps=4, width=96, height=64)
    return d


def request(schema: dict, max_tokens: int = 300, **kw) -> JobCreate:
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    gen = {"max_tokens": max_tokens, "temperature": 1.0, "seed": 5}
    return JobCreate.model_validate({"response_format": fmt, "generation": gen} | kw)


def run(pipeline, req, path):
    return pipeline.submit(req, path).result()


def test_one_call_result_has_output_json(pipeline, files):
    out = run(pipeline, request(INVOICE, task="extract"), files / "a.png")
    assert out.finish_reason == "stop" and out.segments is None
    jsonschema.validate(out.json, INVOICE)
    assert json.loads(out.text) == out.json
    public = output_of(out).model_dump(mode="json")
    assert public["json"] == out.json and public["finish_reason"] == "stop"
    assert public["warning"] == DEMO_WARNING


def test_chunks_are_each_constrained(pipeline, files):
    chunks = {"fps": 2, "max_frames": 4}  # two chunks of the 4-second clip
    out = run(pipeline, request(CHAPTERS, task="caption", video=chunks), files / "a.mp4")
    assert [(s["start_s"], s["end_s"]) for s in out.segments] == [(0.0, 2.0), (2.0, 4.0)]
    for s in out.segments:
        assert s["finish_reason"] == "stop"
        jsonschema.validate(s["json"], CHAPTERS)
    assert out.json is None  # the text joins two answers: read segments[i].json
    assert out.finish_reason == "stop"

    out = run(pipeline, request(CHAPTERS, task="summarize", video=chunks), files / "a.mp4")
    assert len(out.segments) == 2
    for s in out.segments:
        jsonschema.validate(s["json"], CHAPTERS)
    jsonschema.validate(out.json, CHAPTERS)  # the final pass over the chunks' answers
    assert json.loads(out.text) == out.json


def test_truncated_json_is_reported(pipeline, files):
    out = run(pipeline, request(UNBOUNDED, max_tokens=24), files / "a.png")
    assert out.finish_reason == "length" and out.json is None
    assert out.usage["output_tokens"] == 24
    public = output_of(out).model_dump(mode="json")
    assert public["json"] is None and public["finish_reason"] == "length"
    assert TRUNCATED_WARNING in public["warning"] and DEMO_WARNING in public["warning"]


def test_run_flags(pipeline, files, tmp_path):
    schema_file = tmp_path / "invoice.schema.json"
    schema_file.write_text(json.dumps(INVOICE))
    args = build_parser().parse_args(
        ["run", str(files / "a.png"), "--schema", str(schema_file), "--temperature", "1"]
    )
    req = request_from_flags(
        args.task, args.prompt, args.max_tokens, args.temperature, args.thinking,
        args.fps, args.max_frames, args.evs_rate, not args.no_audio, args.schema, args.json,
    )  # fmt: skip
    spec = req.response_format.json_schema
    assert spec.name == "invoice_schema" and spec.schema_ == INVOICE and spec.strict
    out = io.StringIO()
    assert run_all(pipeline, [files / "a.png"], req, out) == 0
    line = json.loads(out.getvalue())
    jsonschema.validate(line["output"]["json"], INVOICE)

    json_mode = request_from_flags(None, None, 40, 1.0, False, None, None, None, True, None, True)
    assert json_mode.response_format.type == "json_object"
    result = run(pipeline, json_mode, files / "a.png")
    assert isinstance(result.json, dict) or result.finish_reason == "length"

    with pytest.raises(SystemExit):  # one format at a time
        build_parser().parse_args(["run", "x.png", "--json", "--schema", str(schema_file)])
    schema_file.write_text(json.dumps({"type": "array", "uniqueItems": True}))
    with pytest.raises(SystemExit, match="uniqueItems"):
        request_from_flags(None, None, None, None, False, None, None, None, True, schema_file)
