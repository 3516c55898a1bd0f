"""Triton kernels compiled while a benchmark's clock runs.

Triton compiles a kernel again for each new specialisation of its arguments (an integer
equal to 1 or divisible by 16, a pointer's alignment, each constexpr): a shape the warm-up
did not meet compiles during the timed run, on the thread that launches it. On the engine
thread that holds up every stage behind it for the compile's whole length (≈ 0.1-1 s a
kernel), so a first run in a process can be slower than the same run repeated. The
interpreter (no GPU) compiles nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from triton import knobs


class TritonCompiles:
    """`with TritonCompiles() as c:` counts compiles (`c.count`, per kernel in `c.kernels`)
    and their seconds (`c.seconds`), through Triton's JIT hooks, restored on exit."""

    def __init__(self) -> None:
        self.kernels: Counter[str] = Counter()
        self.seconds = 0.0
        self.variants: list[str] = []  # what each compile specialised: options, argument types
        self._started: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return sum(self.kernels.values())

    def summary(self) -> dict:
        return {"count": self.count, "seconds": self.seconds, "kernels": dict(self.kernels),
                "variants": self.variants}  # fmt: skip

    def __enter__(self) -> TritonCompiles:
        self._saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
        knobs.runtime.jit_cache_hook = self._missed
        knobs.runtime.jit_post_compile_hook = self._compiled
        return self

    def __exit__(self, *exc) -> None:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = self._saved

    def _missed(self, *, repr: str, **_) -> bool:  # noqa: A002 (Triton's keyword)
        """Called before a compile (no kernel for these arguments in memory)."""
        with self._lock:
            self._started[threading.get_ident()] = (time.perf_counter(), repr)
        return False  # a true value would skip the compile

    def _compiled(self, *, fn, **_) -> None:
        with self._lock:
            started, variant = self._started.pop(threading.get_ident(), (None, None))
            if started is not None:
                self.seconds += time.perf_counter() - started
                self.variants.append(variant)
            self.kernels[fn.name] += 1
