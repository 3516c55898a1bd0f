"""The DATA_DIR store: job inputs and results on a (possibly shared) filesystem.

Layout:
    {data_dir}/inputs/{job_id}/input     the media, exactly as uploaded or downloaded
    {data_dir}/results/{job_id}.{a}.json the JobResult JSON of the attempt that finished the
                                         job (its record's `result` names the file)

Lifetimes: an input is removed as soon as its job is finished (nothing reads it again, and
inputs are the large files); a result stays for the job's retention (contract/retention.py).
Paths are built from job ids only, never from client-supplied names. Writers go through a
temporary name and an atomic rename, so a reader never sees half a file. The gateway
streams inputs in through service/input_sink.py.
"""

from __future__ import annotations

import hashlib
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

    def results_of(self, job_id: str) -> list[Path]:
        """Every result file of the job (the published one, and any left by an attempt that
        died between writing its file and its record)."""
        return list((self.root / "results").glob(f"{_checked(job_id)}.*json"))

    def stage_result(self, result: JobResult, attempt: str) -> Path:
        """Write the result, whole, under this attempt's own name (the same again when the
        attempt retries): the record that names it (jobstore.finish) publishes it; an
        attempt that loses deletes it."""
        tag = hashlib.sha256(attempt.encode()).hexdigest()[:16]
        path = self.root / "results" / f"{_checked(result.id)}.{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.model_dump_json())
        return path

    def read_result(self, path: str) -> JobResult | None:
        """`path`: the record's `result`, relative to DATA_DIR."""
        try:
            return JobResult.model_validate_json((self.root / path).read_bytes())
        except FileNotFoundError:
            return None

    def delete_input(self, job_id: str) -> None:
        shutil.rmtree(self.input_path(job_id).parent, ignore_errors=True)

    def delete(self, job_id: str) -> None:
        self.delete_input(job_id)
        for path in self.results_of(job_id):
            path.unlink(missing_ok=True)
