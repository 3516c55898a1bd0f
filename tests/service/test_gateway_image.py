"""The gateway's image holds no torch, Triton, PyAV or numpy, and serves (issue #14).

No Docker engine runs on the CI machines, so this test builds what docker/Dockerfile.gateway
builds, step by step: the folders its COPY lines name, copied into an empty directory, then
`pip install .` into a fresh virtual environment. That environment must hold none of the
worker's dependencies, and its `omnibatch gateway` must accept a job on a real Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import httpx

from cli.embedded_redis import free_port
from tests.service.conftest import AUTH_A, KEY_A, png_bytes, wait_healthy
from tests.test_compose import copied_paths

ROOT = Path(__file__).resolve().parents[2]
WORKER_ONLY = ("torch", "triton", "av", "numpy")


def test_the_gateway_image_installs_without_torch_and_serves(redis_url, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for name in copied_paths(ROOT / "docker" / "Dockerfile.gateway"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, context / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "."], cwd=context, check=True)

    listing = "import importlib.metadata as m\nfor d in m.distributions(): print(d.name)"
    out = subprocess.run([python, "-c", listing], capture_output=True, text=True, check=True)
    installed = set(out.stdout.lower().split())
    assert "fastapi" in installed and not installed & set(WORKER_ONLY), sorted(installed)

    port = free_port()
    env = {
        "PATH": f"{env_dir / 'bin'}",
        "OMNIBATCH_REDIS_URL": redis_url,
        "OMNIBATCH_DATA_DIR": str(tmp_path / "data"),
        "OMNIBATCH_API_KEYS": f"alpha:{KEY_A}",
    }
    cmd = [env_dir / "bin" / "omnibatch", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc)
        with httpx.Client(base_url=base, headers=AUTH_A, timeout=30) as client:
            resp = client.post("/v1/jobs", files={"file": ("a.png", png_bytes())})
            assert resp.status_code == 202, resp.text
            job = client.get(f"/v1/jobs/{resp.json()['id']}").json()
            assert job["status"] == "queued" and job["queue_position"] == 0
            bad = client.post("/v1/jobs", json={})
            assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    finally:
        proc.terminate()
        proc.wait(10)
