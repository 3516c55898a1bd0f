"""The `omnibatch` command as a user runs it: `run`, `serve` + `submit`, `demo-checkpoint`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import free_port
from tests.e2e.conftest import ROOT

SAMPLES = sorted((ROOT / "samples").iterdir())


def _env(demo_cache, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIBATCH_")}
    return env | {"XDG_CACHE_HOME": str(demo_cache)} | extra


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def test_run_batches_across_files_and_writes_a_line_as_each_finishes(tmp_path, demo_cache):
    """Every file is in the engine at once: it computed requests of several files in one step
    (no file here has more than two model calls at a time: the PDF's two pages). One line per
    input, naming it, in the order they finished; a bad file fails alone, with exit status 1."""
    copies = []
    for sample in ("clip.mp4", "picture.png", "speech.wav"):
        copies.append(tmp_path / f"copy-{sample}")
        shutil.copy(ROOT / "samples" / sample, copies[-1])
    garbage = tmp_path / "noise.bin"
    garbage.write_bytes(os.urandom(3000))
    out = tmp_path / "results.jsonl"
    inputs = [*map(str, SAMPLES + copies), str(garbage)]
    proc = subprocess.run(
        _cli("run", *inputs, "--max-tokens", "16", "--task", "summarize", "--out", str(out)),
        cwd=ROOT, env=_env(demo_cache), capture_output=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 1, "one input failed"
    lines = {line["input"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert sorted(lines) == sorted(inputs)
    bad = lines.pop(str(garbage))
    assert bad["status"] == "failed" and bad["output"] is None
    assert bad["error"]["code"] in {"media_unreadable", "media_unsupported"}
    assert str(tmp_path) not in bad["error"]["message"], "no server path in errors"
    for line in lines.values():
        assert line["status"] == "succeeded", line
        assert set(line) == {"input", "status", "output", "usage"}
        assert isinstance(line["output"]["text"], str)
        assert "meaningless" in line["output"]["warning"]
        assert 1 <= line["usage"]["output_tokens"] <= 16 * 3  # pages + the summary pass
    peak = re.search(rb"the engine computed up to (\d+) requests in one step", proc.stderr)
    assert peak is not None and int(peak.group(1)) >= 3, proc.stderr[-2000:]


def test_run_rejects_invalid_options(demo_cache):
    proc = subprocess.run(
        _cli("run", str(SAMPLES[0]), "--evs-rate", "2"),
        cwd=ROOT, env=_env(demo_cache), capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert b"video.evs_rate" in proc.stderr


def _descendants(pid: int) -> dict[int, str]:
    """pid → start time (/proc/PID/stat field 22) of every process below `pid`."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            parents[int(entry.name)] = (int(fields[1]), fields[19])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in parents.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def _alive(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_serve_runs_the_whole_service_and_stops_on_sigterm(tmp_path, demo_cache):
    port = free_port()
    data = tmp_path / "data"
    env = _env(demo_cache, OMNIBATCH_DATA_DIR=str(data), OMNIBATCH_LEASE_TTL_S="5")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        _cli("serve", "--port", str(port), "--workers", "2"),
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz").json().get("workers") == 2:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])

        request = json.dumps({"task": "caption", "generation": {"max_tokens": 2}})
        image = ROOT / "samples" / "picture.png"
        done = subprocess.run(
            _cli("submit", str(image), "--server", base, "--request", request, "--wait"),
            cwd=ROOT, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["status"] == "succeeded" and result["model"]["name"] == "demo-random"
        assert result["usage"]["images"] == 1

        tree = _descendants(serve.pid)
        workers = [p for p in tree if " worker --device " in _cmdline(p)]
        assert len(workers) == 2 and any("redis-server" in _cmdline(p) for p in tree)
        decoders = [p for p in tree if "spawn_main" in _cmdline(p)]
        per_worker = max(1, (os.cpu_count() or 1) // 2)
        assert len(decoders) == 2 * per_worker, "the two workers share the host's cores"
    finally:
        serve.send_signal(signal.SIGTERM)  # SIGTERM used to orphan every child
        assert serve.wait(90) == 0
    left = [f"{p} {_cmdline(p)}" for p, start in tree.items() if _alive(p, start)]
    assert left == [], "no process outlives serve"
    assert (data / "redis" / "appendonlydir").is_dir(), "the embedded Redis kept an AOF"
    assert "without auth" in (tmp_path / "serve.log").read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz")


def test_demo_checkpoint_writes_the_published_layout(tmp_path):
    target = tmp_path / "demo"
    proc = subprocess.run(_cli("demo-checkpoint", str(target)), cwd=ROOT, timeout=120)
    assert proc.returncode == 0
    index = json.loads((target / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and all((target / s).is_file() for s in shards)
    assert (target / "config.json").is_file()
