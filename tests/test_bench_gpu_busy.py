"""benchmarks.gpu_busy's interval arithmetic (the profiler part runs on a GPU only)."""

from __future__ import annotations

import random

import pytest

from benchmarks.gpu_busy import busy_by_stage, merged


def test_overlapping_kernels_merge_into_their_union():
    assert merged([(5, 9), (0, 2), (1, 3), (8, 12), (12, 13)]) == [(0, 3), (5, 13)]


def test_stage_windows_count_the_kernel_time_inside_them():
    union = merged([(0, 10), (20, 30), (40, 50)])
    windows = [("encode", 5, 25), ("prefill", 25, 45), ("encode", 100, 110)]
    got = busy_by_stage(union, windows)
    assert got["encode"]["seconds"] == pytest.approx(30e-9)
    assert got["encode"]["kernel_seconds"] == pytest.approx(10e-9)  # 5..10 and 20..25
    assert got["prefill"]["kernel_seconds"] == pytest.approx(10e-9)  # 25..30 and 40..45
    assert got["encode"]["share"] == pytest.approx(1 / 3)


def test_against_counting_each_nanosecond():
    rng = random.Random(0)
    kernels = [(a, a + rng.randrange(1, 40)) for a in rng.sample(range(1000), 60)]
    windows = [("s", a, a + rng.randrange(0, 300)) for a in rng.sample(range(1100), 20)]
    busy = {t for s, e in kernels for t in range(s, e)}
    want = sum(1 for _, a, b in windows for t in range(a, b) if t in busy)
    got = busy_by_stage(merged(kernels), windows)["s"]["kernel_seconds"]
    assert got == pytest.approx(want / 1e9)
