"""How far media decoding may run ahead of the GPU: a budget of host bytes.

Decoded media waits in shared memory until the engine takes it (copies it to the GPU, or
encodes it), and /dev/shm is small (32 GB in deploy/, of which the worker takes half, or its
MEDIA_GB share of that half when several workers use one /dev/shm; the pool workers' free
frame buffers live in the other, a quarter of /dev/shm at most: media/frame_buffers.py):
twenty 20-page documents of float pages at the default budget, or a hundred 720p clips,
fill that half. A decode may start while the bytes held plus the
decodes in flight, each estimated at the mean size decoded so far, stay under the budget;
until one has landed, `first` may run at once (one per pool worker). With nothing held and
nothing in flight a decode always starts, so a file larger than the budget still gets its
turn. Waiting decodes start in the order they asked.
"""

from __future__ import annotations

import threading
from collections import deque

from media.frame_buffers import shm_bytes


def shm_budget(limit: int | None = None) -> int:
    """Half of /dev/shm (where decoded tensors travel), or `limit` if smaller or no shm."""
    shm = shm_bytes()
    if shm is None:
        return limit if limit is not None else 1 << 34
    half = shm // 2
    return min(half, limit) if limit is not None else half


class MediaBudget:
    def __init__(self, max_bytes: int, first: int):
        self.max_bytes, self.first = max_bytes, first
        self.held = self.in_flight = self.peak = 0
        self._seen = self._decoded = 0  # bytes and count of decodes landed: the mean's terms
        self._lock = threading.Lock()
        # `start` callers waiting for room, in arrival order; each is woken once, when its
        # turn comes (hundreds of job threads may wait: no wake-up of all at every change)
        self._waiting: deque[threading.Event] = deque()

    def _may_start(self) -> bool:
        if self.in_flight == 0 and self.held == 0:
            return True
        if self._decoded == 0:
            return self.in_flight < self.first
        mean = self._seen / self._decoded
        return self.held + (self.in_flight + 1) * mean <= self.max_bytes

    def try_start(self) -> bool:
        """Count a decode in flight if the budget allows one now and nobody waits for room."""
        with self._lock:
            if self._waiting or not self._may_start():
                return False
            self.in_flight += 1
            return True

    def start(self) -> None:
        """Wait until the budget allows a decode, after those who asked first; count it in
        flight."""
        with self._lock:
            if not self._waiting and self._may_start():
                self.in_flight += 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # `_grant` counted it

    def landed(self, nbytes: int | None) -> None:
        """A decode finished holding `nbytes`; None: it failed and holds nothing."""
        with self._lock:
            self.in_flight -= 1
            if nbytes is not None:
                self.held += nbytes
                self._seen += nbytes
                self._decoded += 1
                self.peak = max(self.peak, self.held)
            self._grant()

    def reset_peak(self) -> None:
        """Start a new high-water mark from what is held now (a benchmark's next workload)."""
        with self._lock:
            self.peak = self.held

    def release(self, nbytes: int) -> None:
        """The engine took `nbytes` of the held media."""
        with self._lock:
            self.held -= nbytes
            self._grant()

    def _grant(self) -> None:
        """Room the budget has now goes to the waiting, in order (under the lock)."""
        while self._waiting and self._may_start():
            self.in_flight += 1
            self._waiting.popleft().set()
