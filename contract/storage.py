"""The DATA_DIR store: job inputs and results on a (possibly shared) filesystem.

Layout:
    {data_dir}/inputs/{job_id}/input     the media, exactly as uploaded or downloaded
    {data_dir}/results/{job_id}.json     the JobResult JSON

Lifetimes: an input is removed as soon as its job is finished (nothing reads it again, and
inputs are the large files); a result stays for the job's retention (contract/retention.py).
Paths are built from job ids only, never from client-supplied names. Writers go through a
temporary name and an atomic rename, so a reader never sees half a file. The gateway
streams inputs in through service/input_sink.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from contract.schemas import JOB_ID_RE, JobResult


def _checked(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise ValueError("malformed job id")
    return job_id


class Storage:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir)

    def input_path(self, job_id: str) -> Path:
        return self.root / "inputs" / _checked(job_id) / "input"

    def result_path(self, job_id: str) -> Path:
        return self.root / "results" / f"{_checked(job_id)}.json"

    def stage_result(self, result: JobResult) -> Path:
        """Write the result under a private temporary name; `commit_result` publishes it."""
        path = self.result_path(result.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        tmp.write_text(result.model_dump_json())
        return tmp

    def commit_result(self, staged: Path, job_id: str) -> Path:
        path = self.result_path(job_id)
        os.replace(staged, path)
        return path

    def read_result(self, job_id: str) -> JobResult | None:
        try:
            return JobResult.model_validate_json(self.result_path(job_id).read_bytes())
        except FileNotFoundError:
            return None

    def delete_input(self, job_id: str) -> None:
        shutil.rmtree(self.input_path(job_id).parent, ignore_errors=True)

    def delete(self, job_id: str) -> None:
        self.delete_input(job_id)
        self.result_path(job_id).unlink(missing_ok=True)
