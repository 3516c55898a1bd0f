"""redis-server and omnibatch processes on this machine, for the benchmarks that start their
own (chaos.py, scale_out.py): a private redis-server, a fresh data dir under `root`, the
caller's environment without its OMNIBATCH_ settings, each process logging to
`root/<name>.log`. The per-key submit rate is lifted: the benchmarks measure the service,
not its rate limit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.load import ROOT
from cli.embedded_redis import EmbeddedRedis


class LocalService:
    def __init__(self, root: Path, settings: dict[str, str], appendfsync: str | None = "everysec"):
        self.root = root
        self.redis = EmbeddedRedis(root / "redis", appendfsync=appendfsync)
        self.redis.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIBATCH_")}
        self.env = env | {
            "OMNIBATCH_REDIS_URL": self.redis.url,
            "OMNIBATCH_DATA_DIR": str(root / "data"),
            "OMNIBATCH_SUBMITS_PER_MINUTE": "1000000",
            **settings,
        }
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, module: str, *args: str) -> None:
        """`python -m module args…` as process `name` (a name used before is replaced)."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        cmd = [sys.executable, "-m", module, *args]
        self.procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def log_tail(self, chars: int = 2000) -> str:
        logs = sorted(self.root.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)

    def close(self) -> None:
        """SIGTERM to every process, SIGKILL to any still there a minute later; Redis last."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.redis.stop()
