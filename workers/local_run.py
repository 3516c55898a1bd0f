"""`omnibatch run`: local files through the pipeline in this process (no Redis, no server).

Every file is submitted at once: the pipeline runs up to MAX_CONCURRENT_JOBS of them
together, decoding ahead as far as the shared-memory budget allows, and the engine batches
their model calls. One JSON line per input, `{input, status, output, usage, error?}`, is
written as that file finishes (so in the order they finish), and one progress bar over the
files is drawn on stderr when stderr is a terminal.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError
from tqdm import tqdm

from contract.json_grammar import grammar_problem
from contract.schemas import JobCreate, JobStatus
from contract.settings import WorkerSettings
from workers.job import Job
from workers.outcome import error_of, output_of, usage_of
from workers.pipeline import Pipeline, PipelineConfig, Progress

log = logging.getLogger("omnibatch.run")
BAR_REFRESH_S = 0.5


def request_from_flags(
    task: str | None,
    prompt: str | None,
    max_tokens: int | None,
    temperature: float | None,
    thinking: bool,
    fps: float | None,
    max_frames: int | None,
    evs_rate: float | None,
    use_audio: bool,
    schema: Path | None = None,
    json_object: bool = False,
) -> JobCreate:
    """The same request model the REST API takes; flags left out keep its defaults.

    schema: a JSON Schema file → `response_format` json_schema (strict: keywords the grammar
    library does not implement are refused); json_object → any JSON object."""

    def given(**fields):
        return {k: v for k, v in fields.items() if v is not None}

    body = given(task=task, prompt=prompt)
    body["generation"] = given(max_tokens=max_tokens, temperature=temperature, thinking=thinking)
    body["video"] = given(fps=fps, max_frames=max_frames, evs_rate=evs_rate, use_audio=use_audio)
    if schema is not None:
        body["response_format"] = _schema_format(schema)
    elif json_object:
        body["response_format"] = {"type": "json_object"}
    try:
        request = JobCreate.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"omnibatch run: invalid options: {problems}") from None
    if (problem := grammar_problem(request.response_format.grammar())) is not None:
        raise SystemExit(f"omnibatch run: --schema {schema}: {problem}")
    return request


def _schema_format(path: Path) -> dict:
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"omnibatch run: --schema {path}: {exc}") from None
    name = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:64] or "schema"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def run_files(
    paths: list[Path],
    request: JobCreate,
    model: Path | None,
    device: str | None,
    out: TextIO,
    quantize: str | None = None,
) -> int:
    """Load the pipeline as a worker would, process `paths`; returns how many failed."""
    s = WorkerSettings()
    pipeline = Pipeline.load(
        model or s.model, device or default_device(), s.gpu_memory_gb, PipelineConfig.of(s),
        quantize or s.quantize,
    )
    try:
        failed = run_all(pipeline, paths, request, out)
        log.info(
            "%d files; the engine computed up to %d requests in one step",
            len(paths),
            pipeline.engine.stats.peak_batch,
        )
        return failed
    finally:
        pipeline.close()


def run_all(pipeline: Pipeline, paths: list[Path], request: JobCreate, out: TextIO) -> int:
    """Every file of `paths` in flight at once; a line to `out` as each finishes. Returns how
    many failed (one bad file never stops the others)."""
    stages = _Stages()
    jobs = {}
    for i, path in enumerate(paths):
        job = pipeline.submit(request, path, stages.reporter(i))
        jobs[job.future] = (i, path, job)
    failed = 0
    with tqdm(total=len(paths), unit="file", disable=not sys.stderr.isatty()) as bar:
        pending = set(jobs)
        while pending:
            done, pending = wait(pending, BAR_REFRESH_S, return_when=FIRST_COMPLETED)
            for f in done:
                i, path, job = jobs.pop(f)
                line = result_line(path, job)
                failed += line["status"] == JobStatus.failed
                out.write(json.dumps(line) + "\n")
                out.flush()
                stages.finished(i)
            bar.set_postfix_str(stages.summary(), refresh=False)
            bar.update(len(done))
    return failed


def result_line(path: Path, job: Job) -> dict:
    """A finished job as its output line: `{input, status, output, usage, error?}`."""
    line: dict = {"input": str(path)}
    try:
        result = job.result()
    except Exception as exc:  # the file's error goes in its line
        error = error_of(exc, path.name)
        return line | {
            "status": JobStatus.failed,
            "output": None,
            "usage": None,
            "error": error.model_dump(mode="json"),
        }
    return line | {
        "status": JobStatus.succeeded,
        "output": output_of(result).model_dump(mode="json", exclude_none=True),
        "usage": usage_of(result).model_dump(mode="json"),
    }


class _Stages:
    """Each unfinished file's stage as its job reports it (job threads), for the bar."""

    def __init__(self):
        self._lock = threading.Lock()
        self._of: dict[int, str] = {}

    def reporter(self, i: int) -> Progress:
        def report(stage: str, done: int, total: int) -> None:
            with self._lock:
                self._of[i] = stage

        return report

    def finished(self, i: int) -> None:
        with self._lock:
            self._of.pop(i, None)

    def summary(self) -> str:
        with self._lock:
            counts = Counter(self._of.values())
        return ", ".join(f"{n} {stage}" for stage, n in sorted(counts.items()))
