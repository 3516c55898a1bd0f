"""How much of each engine stage the GPU spent running kernels (`benchmarks.e2e --gpu-busy`).

The engine's stage timers (StageStats in profile mode) say how long each stage took and
record its window; a profiler of CUDA activity over the same run gives every kernel's
interval on the same clock (both epoch nanoseconds). A stage whose windows hold far less
kernel time than wall time left the GPU idle: the host was launching, waiting or elsewhere.
Copies and memsets are not counted: the job threads' uploads run on streams of their own
and occupy no multiprocessor.

    with GpuBusy() as busy:
        ...                                    # the run
    busy.by_stage(windows)  # {stage: {"seconds", "kernel_seconds", "share"}}
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import torch
from torch.profiler import ProfilerActivity, profile

Window = tuple[str, int, int]  # (stage, start ns, end ns): StageStats.windows


class GpuBusy:
    """Kernel intervals (epoch ns) of everything run inside the block, merged."""

    def __init__(self) -> None:
        self.intervals: list[tuple[int, int]] = []
        self._prof = profile(activities=[ProfilerActivity.CUDA])

    def __enter__(self) -> GpuBusy:
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize()
        self._prof.__exit__(*exc)
        kernels = (
            (e.start_ns(), e.end_ns())
            for e in self._prof.profiler.kineto_results.events()
            if e.device_type() == torch.autograd.DeviceType.CUDA
            and not e.name().startswith(("Memcpy", "Memset"))
        )
        self.intervals = merged(kernels)

    def by_stage(self, windows: Iterable[Window]) -> dict[str, dict[str, float]]:
        return busy_by_stage(self.intervals, windows)


def merged(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intervals -> their union as sorted, disjoint intervals (kernels of several streams
    overlap)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def busy_by_stage(
    union: list[tuple[int, int]], windows: Iterable[Window]
) -> dict[str, dict[str, float]]:
    """Disjoint sorted kernel intervals (`merged`) and stage windows -> per stage its windows'
    seconds, the kernel seconds inside them and their ratio."""
    starts = [s for s, _ in union]
    ends = [0] + list(_cumulative(union))  # ends[i]: busy ns of union[:i]
    out: dict[str, dict[str, float]] = {}
    for stage, a, b in windows:
        row = out.setdefault(stage, {"seconds": 0.0, "kernel_seconds": 0.0})
        row["seconds"] += (b - a) / 1e9
        row["kernel_seconds"] += (_busy_before(union, starts, ends, b)
                                  - _busy_before(union, starts, ends, a)) / 1e9  # fmt: skip
    for row in out.values():
        row["share"] = row["kernel_seconds"] / row["seconds"] if row["seconds"] else 0.0
    return out


def _cumulative(union: list[tuple[int, int]]) -> Iterable[int]:
    total = 0
    for s, e in union:
        total += e - s
        yield total


def _busy_before(union, starts, ends, t: int) -> int:
    """Busy ns of the union before time t."""
    i = bisect.bisect_right(starts, t)  # union[:i] start at or before t
    if i == 0:
        return 0
    s, e = union[i - 1]
    return ends[i - 1] + min(e, t) - s
