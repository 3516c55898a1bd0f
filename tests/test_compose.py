"""Structure of deploy/docker-compose.yml (no Docker engine runs here, so parse and check)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = [name for name in SERVICES if name.startswith("worker-")]


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", duration))


def _gigabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg])b?", size.lower()).groups()
    return float(number) * {"k": 2**-20, "m": 2**-10, "g": 1}[unit]


def _cli_accepts(argv: list[str]) -> bool:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def test_expected_services():
    assert {"redis", "gateway", "webhooks"} <= set(SERVICES)
    assert WORKERS, "at least one GPU worker"


def test_redis_is_durable():
    redis = SERVICES["redis"]
    args = redis["command"]
    assert args[0] == "redis-server"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert volume in COMPOSE["volumes"] and target == flags["--dir"]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_has_its_own_gpu(name):
    worker = SERVICES[name]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    (gpu,) = device["device_ids"]
    # The container sees only its reserved GPU, and the worker addresses it.
    assert worker["command"][-2:] == ["--device", "cuda:0"]
    assert gpu.isdigit()
    assert _gigabytes(worker["shm_size"]) >= 1
    assert _seconds(worker["stop_grace_period"]) >= 120


def test_each_worker_reserves_a_different_gpu():
    gpus = [
        SERVICES[w]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
        for w in WORKERS
    ]
    assert len(set(gpus)) == len(gpus)


@pytest.mark.parametrize("name", WORKERS)
def test_worker_health_waits_for_the_model(name):
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] == "CMD" and check["test"][1:4] == ["omnibatch", "worker", "--check"]
    assert _cli_accepts(check["test"][2:])
    assert _seconds(check["start_period"]) >= 300


def test_services_share_the_data_volume_and_weights_are_mounted():
    for name in ["gateway", *WORKERS]:
        mounts = dict(v.split(":", 1) for v in SERVICES[name]["volumes"])
        assert mounts.get("data") == "/data", name
        assert SERVICES[name]["environment"]["OMNIBATCH_DATA_DIR"] == "/data"
    for name in WORKERS:
        targets = [v.rsplit(":", 2)[1] for v in SERVICES[name]["volumes"]]
        assert "/models" in targets
        assert SERVICES[name]["environment"]["OMNIBATCH_MODEL"].startswith("/models/")


def test_everything_points_at_the_compose_redis():
    for name in ["gateway", "webhooks", *WORKERS]:
        assert SERVICES[name]["environment"]["OMNIBATCH_REDIS_URL"].startswith("redis://redis:")
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_health_checks_present():
    for name in ["redis", "gateway", *WORKERS]:
        check = SERVICES[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
    assert "/healthz" in " ".join(SERVICES["gateway"]["healthcheck"]["test"])


@pytest.mark.parametrize(
    "name", [n for n in SERVICES if SERVICES[n].get("command", [""])[0] == "omnibatch"]
)
def test_commands_are_real_subcommands(name):
    assert _cli_accepts(SERVICES[name]["command"][1:])


def test_omnibatch_services_cover_the_processes():
    commands = {SERVICES[n]["command"][1] for n in SERVICES if "command" in SERVICES[n]}
    assert {"gateway", "webhooks", "worker"} <= commands


def test_prometheus_scrapes_the_gateway():
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in SERVICES["prometheus"]["volumes"]


def test_dockerfiles_build_the_right_images():
    gateway = (ROOT / "docker" / "Dockerfile.gateway").read_text()
    worker = (ROOT / "docker" / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", gateway, re.M)
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-\S*runtime", worker, re.M)
    assert "whl/cu" in worker
    # the gateway's image: base dependencies only, no torch (pyproject; tests/test_layout.py)
    steps = "\n".join(line for line in gateway.splitlines() if not line.startswith("#"))
    assert re.search(r"pip install \.( |$)", steps, re.M) and "torch" not in steps
    assert re.search(r"""pip install ["']?\.\[worker\]""", worker)
    assert not re.search(r"^COPY (workers|kernels) ", gateway, re.M)
    for name, image in [("gateway", "omnibatch-gateway"), ("worker-0", "omnibatch-worker")]:
        assert SERVICES[name]["image"] == image


def copied_paths(dockerfile: Path) -> list[str]:
    """The sources of every COPY line of a Dockerfile (the last word is the destination)."""
    lines = dockerfile.read_text().splitlines()
    return [src for line in lines if line.startswith("COPY ") for src in line.split()[1:-1]]


def test_dockerignore_admits_exactly_what_the_images_copy():
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for name in ("Dockerfile.gateway", "Dockerfile.worker"):
        copied.update(copied_paths(ROOT / "docker" / name))
    assert copied == allowed
    assert all((ROOT / path).exists() for path in copied)


def test_every_omnibatch_service_builds_its_image():
    for name, service in SERVICES.items():
        if service.get("image", "").startswith("omnibatch-"):
            assert service["build"]["context"] == "..", name
            dockerfile = ROOT / service["build"]["dockerfile"]
            assert dockerfile.is_file(), name
