"""Chaos on the whole service: while jobs run, SIGKILL the worker, SIGKILL Redis, take the
webhook receiver down; then count what was lost.

    python -m benchmarks.chaos [--jobs 300] [--clients 8] [--max-tokens 2] [--fsync always]

Processes: redis-server (AOF, `appendfsync` per --fsync), `omnibatch gateway`, one CPU
`omnibatch worker` (started again after its kill, as Compose does), `omnibatch webhooks`, all
at their default settings; a webhook receiver in this process. Every job asks for a webhook.
Timeline, seconds after the first submit (TIMELINE): submissions spread over `submit_s`; a
submit that fails while Redis is down is tried again (only a 202 counts as accepted);
worker SIGKILLed, started again; receiver down; Redis SIGKILLed and started again from its
AOF; receiver back right after. Then every accepted job is long-polled to its end and every
job's webhook awaited.

Reports: accepted; lost (accepted, never ended, or gone); jobs finished exactly once (each
ended job has one record and one webhook event, and the finished counters add up to the
ended jobs); the webhook delay: for each job, its first delivery after the later of its end
and the receiver's return (must stay under a minute).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.load import TERMINAL, Client, drain, outcome, png, wait_ready
from benchmarks.local_service import LocalService
from cli.embedded_redis import free_port


@dataclass(frozen=True)
class Timeline:
    submit_s: float = 40.0
    kill_worker: float = 10.0
    worker_back: float = 13.0
    receiver_down: float = 20.0
    kill_redis: float = 25.0
    redis_back: float = 28.0
    receiver_back: float = 30.0


TIMELINE = Timeline()


class Receiver:
    """Webhook receiver on a fixed port that can go down and come back; records
    (arrival time, job id, webhook-id) of every POST it answered 200."""

    def __init__(self):
        self.port = free_port()
        self.got: list[tuple[float, str, str]] = []
        self.server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                got.append((time.time(), json.loads(body)["data"]["job_id"],
                            self.headers["webhook-id"]))  # fmt: skip
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server = None


class Service(LocalService):
    def __init__(self, root: Path, fsync: str):
        self.port = free_port()
        settings = {"OMNIBATCH_ALLOW_PRIVATE_URLS": "127.0.0.1/32", "OMNIBATCH_DEVICE": "cpu"}
        super().__init__(root, settings, appendfsync=fsync)

    def cli(self, name: str, *args: str) -> None:
        """`omnibatch args…` as process `name`."""
        self.spawn(name, "cli.main", *args)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def kill_redis(self) -> None:
        self.redis.proc.kill()
        self.redis.proc.wait()
        self.redis.proc = None


def submit_spread(client: Client, n: int, clients: int, spread_s: float, request: dict):
    """n submits spread over `spread_s`, each tried until accepted -> (ids, failed tries)."""
    body, ids, refused = png(), [], Counter()
    lock, t0 = threading.Lock(), time.monotonic()

    def one(i: int) -> None:
        time.sleep(max(0.0, t0 + i * spread_s / n - time.monotonic()))
        while True:
            job_id, status, _ = client.submit(body, request)
            with lock:
                if job_id:
                    ids.append(job_id)
                    return
                refused[status] += 1
            time.sleep(0.5)

    threads = [threading.Thread(target=lambda k=k: [one(i) for i in range(k, n, clients)])
               for k in range(clients)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, refused


def chaos(service: Service, receiver: Receiver, t0: float, log: list[str]) -> None:
    t = TIMELINE
    steps = [
        (t.kill_worker, "worker SIGKILLed", lambda: service.kill("worker")),
        (t.worker_back, "worker started again", lambda: service.cli("worker", "worker")),
        (t.receiver_down, "receiver down", receiver.down),
        (t.kill_redis, "redis-server SIGKILLed", service.kill_redis),
        (t.redis_back, "redis-server started again (AOF)", service.redis.start),
        (t.receiver_back, "receiver back", receiver.up),
    ]
    for at, what, step in steps:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        step()
        log.append(f"t={time.monotonic() - t0:5.1f} s  {what}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=2)
    p.add_argument("--fsync", default="always", choices=["always", "everysec"])
    p.add_argument("--timeout", type=float, default=900, help="drain limit, seconds")
    args = p.parse_args()
    receiver = Receiver()
    root = Path(tempfile.mkdtemp(prefix="omnibatch-chaos-"))
    print(f"logs and data in {root}")
    service = Service(root, args.fsync)
    try:
        service.cli("gateway", "gateway", "--port", str(service.port))
        service.cli("worker", "worker")
        service.cli("webhooks", "webhooks")
        client = Client(f"http://127.0.0.1:{service.port}", None)
        wait_ready(client, 1)
        report(service, receiver, client, args)
    finally:
        service.close()


def report(service: Service, receiver: Receiver, client: Client, args) -> None:
    request = {"generation": {"max_tokens": args.max_tokens}, "webhook": {"url": receiver.url}}
    before, events, t0 = client.metrics(), [], time.monotonic()
    breaker = threading.Thread(target=chaos, args=(service, receiver, t0, events))
    breaker.start()
    ids, refused = submit_spread(client, args.jobs, args.clients, TIMELINE.submit_s, request)
    breaker.join()
    back = time.time() - (time.monotonic() - t0 - TIMELINE.receiver_back)
    jobs = drain(client, ids, args.clients, args.timeout)
    ended = {j: job for j, job in jobs.items() if job and job["status"] in TERMINAL}
    deadline = time.monotonic() + 180
    while {j for _, j, _ in receiver.got} < set(ended) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3.0)  # room for duplicates
    after = client.metrics()
    finished = sum(
        after.get(f'omnibatch_jobs_finished_total{{status="{s}"}}', 0)
        - before.get(f'omnibatch_jobs_finished_total{{status="{s}"}}', 0)
        for s in TERMINAL
    )
    event_ids: dict[str, set[str]] = defaultdict(set)
    first: dict[str, float] = {}
    for at, job_id, event_id in receiver.got:
        event_ids[job_id].add(event_id)
        first[job_id] = min(first.get(job_id, at), at)
    repeats = len(receiver.got) - sum(len(v) for v in event_ids.values())
    down = back - (TIMELINE.receiver_back - TIMELINE.receiver_down)

    def ready(job: dict) -> float:
        """When the job's webhook could first be delivered: its end, or the receiver's return."""
        end = datetime.fromisoformat(job["finished_at"]).timestamp()
        return end if end < down else max(end, back)

    delays = [first[j] - ready(job) for j, job in ended.items() if j in first]
    counts = outcome(jobs)
    for line in events:
        print(line)
    print("| accepted | refused tries | succeeded | failed | lost | ended twice | no webhook "
          "| repeated deliveries | finished counter | max webhook delay s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = {k: v for k, v in counts.items() if k.startswith("failed:")}
    print(
        f"| {len(ids)} | {sum(refused.values())} {dict(refused) or ''} | {counts['succeeded']} | "
        f"{sum(failed.values())} {failed or ''} | {counts['lost']} | "
        f"{sum(1 for v in event_ids.values() if len(v) > 1)} | {len(set(ended) - set(first))} | "
        f"{repeats} | {int(finished)} of {len(ended)} ended | {max(delays, default=0):.1f} |"
    )


if __name__ == "__main__":
    main()
