"""The OpenAPI document against what the API does: a bounded schemathesis run (`--checks all`:
no 5xx, every status, header and body documented, valid requests accepted, invalid ones
refused, OPTIONS and 405 `Allow` right) over a real uvicorn gateway on a real redis-server.

What a document cannot promise is supplied in schemathesis_hooks.py (URLs that exist, fresh
idempotency keys, end after start, batch files that are JSONL, an input file that exists) and
schemathesis.toml (content sniffing's 415, /readyz's 503 without a worker); anything else
schemathesis reports fails the test, with its report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import KEY_A, png_bytes

HERE = Path(__file__).parent
RUN_S = 50  # schemathesis's whole budget: coverage, then fuzzing and stateful until spent


def test_schemathesis_finds_no_mismatch(gateway, redis_url, receiver):
    receiver.replies = [(200, {"Content-Type": "image/png"}, png_bytes())]
    url = gateway(
        redis_url,
        OMNIBATCH_ALLOW_PRIVATE_URLS="127.0.0.1/32",  # the receiver, for input and webhook URLs
        OMNIBATCH_SUBMITS_PER_MINUTE="1000000",
        OMNIBATCH_MAX_WAIT_S="1",  # long-polls on jobs no worker takes end quickly
    )
    env = os.environ | {
        "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks",
        "OMNIBATCH_TEST_RECEIVER": receiver.url,
        "OMNIBATCH_TEST_KEY": KEY_A,
    }
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{url}/openapi.json", "--checks", "all", "--max-time", str(RUN_S),
        "--no-shrink", "--workers", "1",
    ]  # fmt: skip
    run = subprocess.run(
        cmd, env=env, cwd=HERE.parent.parent, capture_output=True, text=True, timeout=RUN_S + 120
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-4000:]
    assert "passed" in run.stdout and "Coverage" in run.stdout and "Stateful" in run.stdout
