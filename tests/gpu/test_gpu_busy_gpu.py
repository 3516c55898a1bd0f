"""benchmarks.gpu_busy on the GPU: kernel intervals and host time on one clock."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.gpu_busy import GpuBusy

pytestmark = pytest.mark.gpu


def test_kernel_time_lands_in_its_window_and_idle_time_does_not():
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    x @ x  # cuBLAS set up outside the windows
    with GpuBusy() as busy:
        torch.cuda.synchronize()
        a = time.time_ns()
        for _ in range(50):
            x @ x
        torch.cuda.synchronize()
        b = time.time_ns()
        time.sleep(0.05)
        c = time.time_ns()
    got = busy.by_stage([("work", a, b), ("idle", b, c)])
    assert got["work"]["share"] > 0.8, got
    assert got["idle"]["share"] < 0.05, got
