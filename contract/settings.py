"""Configuration (docs/api.md §3): one pydantic-settings class per process type.

Every field reads `OMNIBATCH_<NAME>` from the environment. Durations are seconds.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from media.limits import MediaLimits

PLACEHOLDER_SECRETS = frozenset(
    {"changethis", "changeme", "change-me", "secret", "password", "test", "example", "xxx"}
)
MIN_SECRET_LEN = 16


def _split_csv(v: object) -> object:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


def _check_secret(what: str, value: str) -> None:
    if value.lower() in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LEN:
        raise ValueError(
            f"{what} is a placeholder or shorter than {MIN_SECRET_LEN} characters; "
            "set a real random value"
        )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class CommonSettings(BaseSettings):
    """What every process needs: where Redis and the data store are, and the URL guard."""

    model_config = SettingsConfigDict(env_prefix="OMNIBATCH_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("./omnibatch-data")
    # hosts or CIDRs exempt from the SSRF guard, e.g. "127.0.0.1/32,::1/128"
    allow_private_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a finished job's record and result are kept (its input goes at once).
    job_record_ttl_s: int = Field(7 * 24 * 3600, gt=0)

    _csv = field_validator("allow_private_urls", mode="before")(_split_csv)


class GatewaySettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # "name:key,name:key" pairs; or a file with one name:key per line
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    max_upload_mb: int = Field(2048, gt=0)
    max_queue_depth: int = Field(10_000, gt=0)  # queued jobs over all priorities → 503
    queue_full_retry_after_s: int = Field(30, gt=0)
    job_timeout_s: int = Field(6 * 3600, gt=0)  # RQ job_timeout of one job
    rq_result_ttl_s: int = Field(3600, ge=0)  # RQ's own return value; our result is on disk
    idempotency_ttl_s: int = Field(24 * 3600, gt=0)
    url_fetch_timeout_s: float = Field(300.0, gt=0)  # whole download of an input.url
    url_connect_timeout_s: float = Field(10.0, gt=0)
    # a submit body that sends nothing for this long is answered 408 and its connection closed
    upload_idle_timeout_s: float = Field(60.0, gt=0)
    max_wait_s: int = Field(60, ge=0, le=60)
    max_queue_age_s: float = Field(24 * 3600, gt=0)  # a job queued longer becomes `expired`
    submits_per_minute: int = Field(600, gt=0)  # per API key; bursts of up to a minute's worth
    housekeeping_interval_s: float = Field(60.0, gt=0)  # expiry and retention sweeps
    webhook_secret: str | None = None  # master secret the per-key webhook secrets derive from
    debug: bool = False  # only then do 500s carry the exception text
    # Batch API (service/batches/); the file and line caps are OpenAI's.
    batch_max_file_mb: int = Field(200, gt=0)  # a `purpose=batch` input file
    batch_max_lines: int = Field(50_000, gt=0)
    batch_max_line_mb: int = Field(20, gt=0)  # one line, data-URL media included
    batch_max_queued: int = Field(512, gt=0)  # one batch's jobs waiting in the queue at once
    batch_feed_interval_s: float = Field(1.0, gt=0)  # how often the feeder tops the queue up
    file_ttl_s: int = Field(30 * 24 * 3600, gt=0)  # uploaded files, batch output files, batches

    _csv_keys = field_validator("api_keys", mode="before")(_split_csv)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @field_validator("webhook_secret")
    @classmethod
    def _real_webhook_secret(cls, v: str | None) -> str | None:
        if v is not None:
            _check_secret("OMNIBATCH_WEBHOOK_SECRET", v)
        return v

    @model_validator(mode="after")
    def _keys(self) -> GatewaySettings:
        keys = self.key_pairs()
        for name, key in keys.items():
            _check_secret(f"API key {name!r}", key)
        if not keys and not is_loopback_host(self.host):
            raise ValueError(
                f"refusing to bind {self.host} without API keys: set OMNIBATCH_API_KEYS"
                " or OMNIBATCH_API_KEYS_FILE, or bind 127.0.0.1"
            )
        return self

    def key_pairs(self) -> dict[str, str]:
        """API key name → key, from `api_keys` and `api_keys_file` together."""
        entries = list(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            entries += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        pairs: dict[str, str] = {}
        for entry in entries:
            name, sep, key = entry.partition(":")
            if not sep or not name or not key:
                raise ValueError("API keys must be name:key pairs")
            if name in pairs:
                raise ValueError(f"API key name {name!r} appears twice")
            pairs[name] = key
        return pairs


class WorkerSettings(CommonSettings):
    model: Path | None = None  # None: the tiny demo checkpoint
    device: str = "cuda:0"
    gpu_memory_gb: float | None = Field(None, gt=0)
    # Quantize a BF16 checkpoint at load into NVIDIA's published FP8 / NVFP4 layout; a
    # checkpoint published quantized is served as it is whatever this says.
    quantize: Literal["fp8", "nvfp4"] | None = None
    max_video_s: float = Field(4 * 3600, gt=0)
    max_pages: int = Field(200, gt=0)
    # Jobs in flight: what the engine can batch (a one-clip job is one sequence of its decode
    # batch, up to 512); decoding ahead is bounded by shared memory (media_budget.py).
    max_concurrent_jobs: int = Field(256, gt=0)
    lease_ttl_s: float = Field(30.0, gt=0)  # a job whose worker is silent this long is requeued
    shutdown_grace_s: float = Field(300.0, ge=0)  # SIGTERM: time the jobs in flight get
    # Media decode processes; None: one per core. N workers on one host share its cores
    # (`omnibatch serve --workers N` gives each cores // N).
    media_workers: int | None = Field(None, gt=0)
    # GB of decoded media held in /dev/shm ahead of the GPU; None: half of /dev/shm. N workers
    # on one /dev/shm share that half (`omnibatch serve --workers N` gives each half / N).
    media_gb: float | None = Field(None, gt=0)

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(max_duration_s=self.max_video_s, max_pages=self.max_pages)


class DeliverySettings(CommonSettings):
    webhook_timeout_s: float = Field(10.0, gt=0)  # a 2xx must arrive within this
    webhook_retry_window_s: int = Field(25 * 3600, gt=0)  # keep retrying at least 24 h
    webhook_backoff_base_s: float = Field(5.0, gt=0)
    webhook_backoff_max_s: float = Field(3600.0, gt=0)
