"""Scale-out on one host (issue #17): N GPU workers on one Redis against one, W-video via REST.

    python -m benchmarks.scale_out [--gpus N] [--jobs J] [--precision bf16|fp8|nvfp4]
                                   [--model full|demo] [--small]

Two runs with the same input files, each on a fresh redis-server and DATA_DIR: first one
worker with J / N jobs, then N workers (default: every visible GPU) with J jobs (default
64 × N). A run starts `redis-server`, `omnibatch gateway` and, per GPU, a worker process
`python -m benchmarks.scale_out worker --device cuda:i`: the shipped `workers.worker.Worker`
around a pipeline built in-process as benchmarks/e2e.py builds it (the full-size random model
at `--precision`, of which no checkpoint exists on disk; the demo checkpoint's tokenizer and
chat template; EOS ignored), on GPU i alone (`claim_gpu`). Each worker warms up as e2e does
before its heartbeat says ready; the clock starts once every worker of the run is ready.

Every worker, in both runs, gets the per-GPU share of the host, so the one-worker run is the
one-GPU figure: MEDIA_WORKERS = cores // N decode processes, MEDIA_GB = half of /dev/shm / N,
and MAX_CONCURRENT_JOBS = J / N: each worker holds its share of the batch at once, as e2e has
its 64 jobs in flight (at the default of 256, the first workers to poll could take more than
their share of a batch this short, and the run would wait on them).

Jobs: W-video (1-minute 720p clips; `--small`: a 4 s 640×360 one), uploaded as multipart by
32 client threads, each e2e's request: caption, fps 1, EVS 0.5, 256 tokens, greedy, every
model call making its 256 tokens; then each is long-polled to its end. Per run: video-hours
per hour from the first submit to the last job's `finished_at`, in total and per worker (the
job records' `worker`, over the same wall), the queue depth and each worker's jobs in flight
sampled every second, and that every job ran and ended exactly once (attempts = started =
succeeded = jobs, per-worker counts adding up). Prints the table and total(N) / (N × total(1))
against the bar 0.9; JSON to $OUT/scale_out.json (after each run, so a cut-off second run
keeps the first) and the processes' logs to $OUT/scale_out_logs when OUT is set.

The work per clip is e2e's; what differs from `benchmarks.e2e --workload video`: the jobs go
through the gateway, Redis and the worker's lease loop; the engine's stage timers are off (as
in a deployed worker); the decode-ahead budget is the worker's /dev/shm share, not 16 GB.
The defaults (64 jobs a worker: 128 / 256 / 512 on 2 / 4 / 8 GPUs) are sized for one
10-minute call: two runs of about a minute of jobs each, after the workers' start.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.e2e import WORKLOADS, bench_pipeline, load, warm_up
from benchmarks.e2e_inputs import workload_files
from benchmarks.load import ROOT, Client, drain
from benchmarks.local_service import LocalService
from cli.embedded_redis import free_port
from contract import jobstore
from contract.settings import WorkerSettings
from service.joblist import queue_depth
from workers.engine.engine import engine_config
from workers.leases import LEASES_KEY, lease_key
from workers.media_budget import shm_budget
from workers.pipeline import PipelineConfig, demo_checkpoint_dir
from workers.worker import claim_gpu, run_worker

VIDEO = WORKLOADS["video"]
BAR = 0.9
CLIENTS = 32
JOBS_PER_GPU = 64
READY_TIMEOUT_S = 900.0  # model build, memory plan, CUDA graphs, warm-up with kernel compiles
DRAIN_TIMEOUT_S = 3600.0
CLIP_BYTES = 60 * 1280 * 720 * 3  # one W-video clip's sampled frames, decoded


@dataclass(frozen=True)
class Share:
    """What each worker gets, in both runs: the per-GPU share of the host."""

    media_workers: int  # MEDIA_WORKERS
    media_gb: float  # MEDIA_GB
    max_jobs: int  # MAX_CONCURRENT_JOBS


class Deployment(LocalService):
    """redis-server, the gateway and one worker process per device, on a fresh data dir."""

    def __init__(self, root: Path, devices: list[str], share: Share, args, files: list[str]):
        super().__init__(root, {
            "OMNIBATCH_MEDIA_WORKERS": str(share.media_workers),
            "OMNIBATCH_MEDIA_GB": f"{share.media_gb:.3f}",
            "OMNIBATCH_MAX_CONCURRENT_JOBS": str(share.max_jobs),
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        port = free_port()
        self.client = Client(f"http://127.0.0.1:{port}", None)
        self.spawn("gateway", "cli.main", "gateway", "--port", str(port))
        model = ["--model", args.model, "--precision", args.precision]
        for i, device in enumerate(devices):
            cmd = ["worker", "--device", device, *model, *files]
            self.spawn(f"worker{i}", "benchmarks.scale_out", *cmd)

    def wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if dead := [n for n, p in self.procs.items() if p.poll() is not None]:
                raise RuntimeError(f"{', '.join(dead)} exited while starting:\n{self.log_tail()}")
            try:
                resp = self.client.http.get("/readyz")
                if resp.status_code == 200 and resp.json()["workers"] >= workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"not ready in {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")


class Sampler:
    """Every second: the jobs queued, and each worker's jobs in flight (the leases it holds)."""

    def __init__(self, r, t0: float):
        self.r, self.t0 = r, t0
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            leased = self.r.zrange(LEASES_KEY, 0, -1)
            pipe = self.r.pipeline(transaction=False)
            for job_id in leased:
                pipe.hget(lease_key(job_id.decode()), "worker")
            in_flight = dict(Counter(w.decode() for w in pipe.execute() if w))
            t = round(time.time() - self.t0, 2)
            self.samples.append({"t": t, "queued": queue_depth(self.r), "in_flight": in_flight})
            if self._stop.wait(1.0):
                return

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        return self.samples


def submit(client: Client, name: str, body: bytes, request: str) -> str:
    resp = client.http.post(
        "/v1/jobs", files={"file": (name, body)}, data={"request": request}
    )  # fmt: skip
    if resp.status_code != 202:
        raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:500]}")
    return resp.json()["id"]


def measure(deploy: Deployment, files: list[str], jobs: int) -> dict:
    """`jobs` W-video jobs through the deployment's REST API; the run's figures."""
    bodies = [(Path(f).name, Path(f).read_bytes()) for f in files]
    request = VIDEO.request(VIDEO.max_tokens(small=False))
    payload = json.dumps(request.model_dump(mode="json", exclude_unset=True))
    client, r = deploy.client, jobstore.connect(deploy.redis.url)
    t0 = time.time()
    sampler = Sampler(r, t0)
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            ids = list(pool.map(lambda j: submit(client, *bodies[j % len(bodies)], payload),
                                range(jobs)))  # fmt: skip
        submit_s = time.time() - t0
        drain(client, ids, CLIENTS, DRAIN_TIMEOUT_S)
    finally:
        samples = sampler.stop()
    records = [jobstore.load(r, job_id) for job_id in ids]
    r.close()
    model = client.http.get(f"/v1/jobs/{ids[0]}/result").json()["model"]
    return summarize(records, t0, submit_s, client.metrics(), samples) | {"model": model}


def summarize(records: list, t0: float, submit_s: float, counters: dict, samples) -> dict:
    """Video-hours per hour, in total and per worker over the run's wall, and exactly-once."""
    ended = [rec for rec in records if rec is not None and rec.finished_at is not None]
    wall = max(rec.finished_at for rec in ended) - t0
    by_worker: dict[str, list] = defaultdict(list)
    for rec in ended:
        by_worker[rec.worker].append(rec)
    workers = {}
    for worker, recs in sorted(by_worker.items()):
        hours = sum(rec.usage.video_seconds for rec in recs if rec.usage) / 3600
        workers[worker] = {
            "jobs": len(recs),
            "video_h": hours,
            "video_h_per_h": hours / (wall / 3600),
            "first_start_s": min(rec.started_at for rec in recs) - t0,
            "last_end_s": max(rec.finished_at for rec in recs) - t0,
        }
    hours = sum(w["video_h"] for w in workers.values())
    output_tokens = sum(rec.usage.output_tokens for rec in ended if rec.usage)
    succeeded = sum(rec.status.value == "succeeded" for rec in ended)
    counts = {
        "attempts": counters.get("omnibatch_job_attempts_total", 0),
        "started": counters.get("omnibatch_jobs_started_total", 0),
        "succeeded": counters.get('omnibatch_jobs_finished_total{status="succeeded"}', 0),
    }
    n = len(records)
    once = set(counts.values()) == {n} and succeeded == n
    return {
        "workers_n": len(workers),
        "jobs": n,
        "succeeded": succeeded,
        "counters": counts,
        "exactly_once": once and sum(w["jobs"] for w in workers.values()) == n,
        "submit_s": submit_s,
        "wall_s": wall,
        "video_h": hours,
        "video_h_per_h": hours / (wall / 3600),
        "output_tokens": output_tokens,
        "workers": workers,
        "queue": samples,
    }


def one_run(n: int, devices: list[str], share: Share, args, files: list[str], jobs: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"omnibatch-scale-out-{n}-"))
    print(f"{n} worker(s), {jobs} jobs: logs in {root}", flush=True)
    t = time.monotonic()
    deploy = Deployment(root, devices[:n], share, args, files)
    try:
        deploy.wait_ready(n)
        ready_s = time.monotonic() - t
        row = measure(deploy, files, jobs) | {"ready_s": ready_s}
    except BaseException:
        print(deploy.log_tail(), file=sys.stderr)
        raise
    finally:
        deploy.close()
        if out := os.environ.get("OUT"):
            shutil.copytree(root, Path(out) / "scale_out_logs" / f"{n}", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("data", "redis"))  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
    print(f"{n} worker(s): ready in {ready_s:.0f} s, {row['video_h_per_h']:.1f} video-h/h in "
          f"{row['wall_s']:.1f} s", flush=True)  # fmt: skip
    return row


def _devices(args) -> list[str]:
    import torch

    gpus = torch.cuda.device_count()
    if args.model == "full" and gpus == 0:
        raise SystemExit("--model full needs CUDA GPUs; --model demo runs on the CPU")
    n = args.gpus or gpus
    if n < 2:
        raise SystemExit(f"scale-out needs 2 workers or more (--gpus; this host has {gpus} GPUs)")
    if gpus and n > gpus:
        raise SystemExit(f"--gpus {n}: this host has {gpus} GPUs")
    return [f"cuda:{i}" for i in range(n)] if gpus else ["cpu"] * n


def _device_name(device: str) -> str:
    """Asked in a process of its own: this one never holds a CUDA context beside a worker."""
    if device == "cpu":
        return "cpu"
    code = "import torch; print(torch.cuda.get_device_name(0))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def _table(report: dict) -> None:
    s = report["share"]
    print(
        f"\nW-video scale-out; {report['model']['name']} {report['model']['precision']}; "
        f"{report['device']}; per worker: {s['media_workers']} decode processes, "
        f"{s['media_gb']:.1f} GB of /dev/shm, {s['max_jobs']} jobs in flight"
    )
    print("| workers | jobs | submit s | wall s | video-h/h total | video-h/h per worker "
          "(min–max) | jobs per worker | exactly once |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for run in report["runs"]:
        per = [w["video_h_per_h"] for w in run["workers"].values()]
        jobs = [w["jobs"] for w in run["workers"].values()]
        once = "yes" if run["exactly_once"] else "NO"
        print(
            f"| {run['workers_n']} | {run['jobs']} | {run['submit_s']:.1f} | {run['wall_s']:.1f} "
            f"| {run['video_h_per_h']:.1f} | {sum(per) / len(per):.1f} ({min(per):.1f}–"
            f"{max(per):.1f}) | {min(jobs)}–{max(jobs)} | {once} |"
        )
    n = report["gpus"]
    verdict = "met" if report["ratio"] >= BAR else "NOT met"
    print(f"total({n}) / ({n} × total(1)) = {report['ratio']:.3f} (bar {BAR}: {verdict})")


def _write(report: dict) -> None:
    if out := os.environ.get("OUT"):
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "scale_out.json"), "w") as f:
            json.dump(report, f, indent=1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, help="workers of the second run (default: every GPU)")
    ap.add_argument("--jobs", type=int, help=f"of the second run (default: {JOBS_PER_GPU} × N)")
    ap.add_argument("--precision", choices=["bf16", "fp8", "nvfp4"], default="bf16")
    ap.add_argument("--model", choices=["full", "demo"], default="full")
    ap.add_argument("--small", action="store_true", help="a short clip (CPU smoke run)")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    try:  # the gateway's imports, before any input is made or GPU time spent
        import service.main  # noqa: F401
    except ModuleNotFoundError as exc:
        raise SystemExit(f"the gateway needs {exc.name}: pip install . (its dependencies)") from exc
    devices = _devices(args)
    n = len(devices)
    jobs = args.jobs or JOBS_PER_GPU * n
    per_worker = math.ceil(jobs / n)
    share = Share(max(1, (os.cpu_count() or 1) // n), shm_budget() / n / 1e9, per_worker)
    if not args.small and share.media_gb * 1e9 < 4 * CLIP_BYTES:
        raise SystemExit(f"/dev/shm holds {share.media_gb:.2f} GB a worker: too little to "
                         "decode ahead (give the host a larger /dev/shm)")  # fmt: skip
    files = workload_files("video", ROOT / ".cache" / "bench", args.small)
    demo_checkpoint_dir()  # written once here, not raced by the workers
    report = {
        "device": _device_name(devices[0]),
        "gpus": n,
        "host": {"cores": os.cpu_count(), "shm_half_gb": shm_budget() / 1e9},
        "share": asdict(share),
        "bar": BAR,
        "runs": [],
    }
    for k, k_jobs in ((1, per_worker), (n, jobs)):
        report["runs"].append(one_run(k, devices, share, args, files, k_jobs))
        _write(report)  # the one-worker run survives a cut-off second run
    one, all_ = report["runs"]
    report |= {"model": one["model"], "ratio": all_["video_h_per_h"] / (n * one["video_h_per_h"])}
    _write(report)
    _table(report)
    return report


def worker_main(argv: list[str]) -> int:
    """A worker process of a run (started by `Deployment`): the pipeline of e2e, warmed up,
    served by the shipped Worker on its device alone."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_out worker")
    ap.add_argument("--device", required=True)
    ap.add_argument("--model", choices=["full", "demo"], required=True)
    ap.add_argument("--precision", choices=["bf16", "fp8", "nvfp4"], required=True)
    ap.add_argument("files", nargs="+", help="warm-up inputs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = WorkerSettings(device=args.device)
    claim_gpu(args.device)  # before CUDA starts: from here "cuda" is this worker's GPU alone
    model, prompts, note = load(args.model, args.precision)
    engine = engine_config(model, settings.gpu_memory_gb)
    config = PipelineConfig.of(settings, ignore_eos=True)
    pipeline = bench_pipeline(model, prompts, engine, note, config, args.model == "demo")
    warm_up(VIDEO, pipeline, args.files, pipeline.media.num_workers)
    return run_worker(args.device, pipeline)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    main()
