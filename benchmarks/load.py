"""Load on the whole service: N submissions from C concurrent clients, then drain.

    python -m benchmarks.load [--jobs 2000] [--clients 32] [--workers 1] [--max-tokens 1]
    python -m benchmarks.load --server http://host:8000 --key KEY ...

Without --server it starts `omnibatch serve` itself (embedded redis-server, the demo model
unless OMNIBATCH_MODEL is set, CPU workers on a host without a GPU) with the worker at its
default settings; only the per-key submit rate is raised, so that the burst measures the
queue and the worker rather than the rate limiter. Each client uploads a small PNG with
`generation.max_tokens` tokens; then every accepted job is long-polled to its end.

Prints submit latency p50/p95/p99, the submit rate, jobs/s from the first submit to the
last end, and succeeded / failed (by error code) / lost (accepted but never ended, or gone)
against the Prometheus counters' view of the same jobs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from cli.embedded_redis import free_port

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
ROOT = Path(__file__).resolve().parents[1]


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


class Client:
    """The REST calls of the benchmarks, one httpx client per thread."""

    def __init__(self, base: str, key: str | None):
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._local = threading.local()

    @property
    def http(self) -> httpx.Client:
        if not hasattr(self._local, "http"):
            self._local.http = httpx.Client(base_url=self.base, headers=self.headers, timeout=120)
        return self._local.http

    def submit(self, body: bytes, request: dict) -> tuple[str | None, int, float]:
        """One upload -> (job id or None, HTTP status or 0 when no answer, seconds)."""
        t0 = time.monotonic()
        try:
            resp = self.http.post(
                "/v1/jobs", files={"file": ("in.png", body)},
                data={"request": json.dumps(request)},
            )  # fmt: skip
        except httpx.HTTPError:
            return None, 0, time.monotonic() - t0
        job_id = resp.json()["id"] if resp.status_code == 202 else None
        return job_id, resp.status_code, time.monotonic() - t0

    def wait(self, job_id: str, deadline: float) -> dict | None:
        """Long-poll one job until it ends or `deadline` (monotonic) passes; None if gone."""
        while True:
            try:
                resp = self.http.get(f"/v1/jobs/{job_id}", params={"wait": 30})
            except httpx.HTTPError:
                resp = None
            if resp is not None and resp.status_code == 404:
                return None
            if resp is not None and resp.status_code == 200:
                job = resp.json()
                if job["status"] in TERMINAL or time.monotonic() > deadline:
                    return job
            elif time.monotonic() > deadline:
                return {"status": "unreachable"}
            else:
                time.sleep(1.0)  # the gateway or its Redis is away: ask again

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith("omnibatch_") and " " in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def drain(client: Client, ids: list[str], clients: int, timeout_s: float) -> dict[str, dict]:
    """Every job's last known state (None: gone) once all ended or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(clients) as pool:
        return dict(zip(ids, pool.map(lambda j: client.wait(j, deadline), ids), strict=True))


def outcome(jobs: dict[str, dict | None]) -> Counter:
    counts: Counter = Counter()
    for job in jobs.values():
        if job is None or job["status"] not in TERMINAL:
            counts["lost"] += 1
        elif job["status"] == "failed":
            counts[f"failed:{job['error']['code']}"] += 1
        else:
            counts[job["status"]] += 1
    return counts


def start_serve(data_dir: Path, port: int, workers: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIBATCH_")}
    env |= {"OMNIBATCH_DATA_DIR": str(data_dir), "OMNIBATCH_SUBMITS_PER_MINUTE": "1000000"}
    if "OMNIBATCH_MODEL" in os.environ:
        env["OMNIBATCH_MODEL"] = os.environ["OMNIBATCH_MODEL"]
    log = open(data_dir / "serve.log", "ab")  # noqa: SIM115 - the child owns it
    cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(port)]
    return subprocess.Popen(
        [*cmd, "--workers", str(workers)], cwd=ROOT, env=env, stdout=log, stderr=log
    )


def wait_ready(client: Client, workers: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            resp = client.http.get("/readyz")
            if resp.status_code == 200 and resp.json()["workers"] >= workers:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready")


def run(client: Client, args) -> None:
    before = client.metrics()
    body, request = png(), {"generation": {"max_tokens": args.max_tokens}}
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.clients) as pool:
        answers = list(pool.map(lambda _: client.submit(body, request), range(args.jobs)))
    submitted = time.monotonic() - t0
    ids = [job_id for job_id, _, _ in answers if job_id]
    latencies = [s for _, _, s in answers]
    jobs = drain(client, ids, args.clients, args.timeout)
    elapsed = time.monotonic() - t0
    after = client.metrics()
    counts = outcome(jobs)
    refused = Counter(status for job_id, status, _ in answers if not job_id)

    def delta(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    finished = sum(delta(f'omnibatch_jobs_finished_total{{status="{s}"}}') for s in TERMINAL)
    print("| jobs | clients | submit p50 / p95 / p99 ms | submits/s | jobs/s | accepted "
          "| succeeded | failed | lost | refused |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("failed:")}
    print(
        f"| {args.jobs} | {args.clients} | {1000 * percentile(latencies, 50):.0f} / "
        f"{1000 * percentile(latencies, 95):.0f} / {1000 * percentile(latencies, 99):.0f} | "
        f"{args.jobs / submitted:.1f} | {len(ids) / elapsed:.2f} | {len(ids)} | "
        f"{counts['succeeded']} | {sum(failed.values())} {failed or ''} | {counts['lost']} | "
        f"{sum(refused.values())} {dict(refused) or ''} |"
    )
    print(
        f"counters: submitted +{delta('omnibatch_jobs_submitted_total')}, started "
        f"+{delta('omnibatch_jobs_started_total')}, attempts "
        f"+{delta('omnibatch_job_attempts_total')}, finished +{finished}; wall {elapsed:.0f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600, help="drain limit, seconds")
    p.add_argument("--server", help="a running gateway; default: start `omnibatch serve`")
    p.add_argument("--key", default=os.environ.get("OMNIBATCH_API_KEY"))
    p.add_argument("--workers", type=int, default=1, help="with no --server")
    args = p.parse_args()
    if args.server:
        run(Client(args.server, args.key), args)
        return
    with tempfile.TemporaryDirectory(prefix="omnibatch-load-") as tmp:
        port = free_port()
        serve = start_serve(Path(tmp), port, args.workers)
        try:
            client = Client(f"http://127.0.0.1:{port}", None)
            wait_ready(client, args.workers)
            run(client, args)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(600)


if __name__ == "__main__":
    main()
