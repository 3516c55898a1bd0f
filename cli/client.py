"""`omnibatch submit`: upload one file to a running server, optionally wait for its result."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
from tqdm import tqdm

WAIT_S = 30  # long-poll slice; the server caps it at 60


def _fail(resp: httpx.Response) -> int:
    print(resp.text, file=sys.stderr)
    return 1


def submit(path: Path, server: str, key: str | None, request: str | None, wait: bool) -> int:
    key = key or os.environ.get("OMNIBATCH_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=server, headers=headers, timeout=WAIT_S + 30) as client:
        with path.open("rb") as media:
            resp = client.post(
                "/v1/jobs", files={"file": (path.name, media)}, data={"request": request or "{}"}
            )
        if resp.status_code not in (200, 202):
            return _fail(resp)
        job = resp.json()
        if not wait:
            print(json.dumps(job))
            return 0
        with tqdm(total=1, desc=path.name, unit="job", disable=not sys.stderr.isatty()) as bar:
            while job["status"] in ("queued", "running"):
                resp = client.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S})
                if resp.status_code != 200:
                    return _fail(resp)
                job = resp.json()
                progress = job.get("progress") or {}
                stage, total = progress.get("stage", job["status"]), progress.get("total", 0)
                done = progress.get("done", 0)
                bar.set_postfix_str(f"{stage} {done}/{total}" if total else stage)
            bar.update(1)
        if job["status"] != "succeeded":
            print(json.dumps(job))
            return 1
        resp = client.get(f"/v1/jobs/{job['id']}/result")
        if resp.status_code != 200:
            return _fail(resp)
        print(json.dumps(resp.json()))
        return 0
