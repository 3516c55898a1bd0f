"""`omnibatch run`: local files through the pipeline in this process (no Redis, no server).

Writes one JSON line per input, `{input, status, output, usage, error?}`, and draws a progress
bar on stderr when stderr is a terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from service.progress_bar import ProgressBar
from service.schemas import JobCreate, JobStatus
from service.settings import WorkerSettings
from workers.outcome import error_of, output_of, usage_of
from workers.pipeline import Pipeline


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
) -> JobCreate:
    """The same request model the REST API takes; flags left out keep its defaults."""

    def given(**fields):
        return {k: v for k, v in fields.items() if v is not None}

    body = given(task=task, prompt=prompt)
    body["generation"] = given(max_tokens=max_tokens, temperature=temperature, thinking=thinking)
    body["video"] = given(fps=fps, max_frames=max_frames, evs_rate=evs_rate, use_audio=use_audio)
    try:
        return JobCreate.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"omnibatch run: invalid options: {problems}") from None


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
    """Process `paths` one after another; returns how many failed."""
    settings = WorkerSettings()
    pipeline = Pipeline.load(
        model or settings.model,
        device or default_device(),
        settings.gpu_memory_gb,
        settings.media_limits,
        quantize or settings.quantize,
    )
    try:
        return _run_each(pipeline, paths, request, out)
    finally:
        pipeline.close()


def _run_each(pipeline: Pipeline, paths: list[Path], request: JobCreate, out: TextIO) -> int:
    bar = ProgressBar(len(paths))
    failed = 0
    for path in paths:
        bar.start(path.name)
        line: dict = {"input": str(path)}
        try:
            result = pipeline.run(request, path, bar.stage, lambda: False)
            line |= {
                "status": JobStatus.succeeded,
                "output": output_of(result).model_dump(mode="json", exclude_none=True),
                "usage": usage_of(result).model_dump(mode="json"),
            }
        except Exception as exc:  # one bad file must not stop the batch
            failed += 1
            error = error_of(exc, path.name)
            line |= {"status": JobStatus.failed, "output": None, "usage": None}
            line["error"] = error.model_dump(mode="json")
        out.write(json.dumps(line) + "\n")
        out.flush()
        bar.advance()
    return failed
