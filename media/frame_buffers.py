"""A pool worker's video frame buffers in shared memory, reused once their consumer is done.

Sampled frames are written straight into a shared segment that travels to the GPU worker
(torch's pickler would otherwise copy each into a fresh one). A fresh segment still costs a
page fault and a zeroed page for every 4 KB on first write: 166 MB per W-video clip,
measured at 0.19 s of a 2.7 s clip on the 2-core box. So a worker keeps what it lent; once
the consumer hands a buffer back (`MediaPool.recycle`) the next job of the same size writes
into pages that are already there.

A buffer is reused only after it was handed back: a consumer that never hands one back
costs reuse, never correctness. The worker forgets the oldest lent buffers past
`LENT_BYTES` (the consumer's copy lives on; the segment goes when the consumer drops it),
and keeps at most `keep_bytes(workers)` of free ones: the free buffers of all a pool's
workers share a quarter of /dev/shm (the media budget has half), so a many-core host does
not fill it (128 workers × 512 MiB would pass deploy/'s 32 GB, and a write past a full
/dev/shm kills the process with SIGBUS).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict

import torch

SHM = "/dev/shm"
KEEP_BYTES = 1 << 29  # free buffers a worker keeps at most: three 720p clips of 60 frames
LENT_BYTES = 1 << 30  # lent buffers a worker remembers (what the media budget holds per core)

BufferId = tuple[int, int]  # (the lending worker's number in its pool, the buffer's number)


def shm_bytes() -> int | None:
    """The size of /dev/shm, where decoded media travels between processes; None without one."""
    if not os.path.isdir(SHM):
        return None
    st = os.statvfs(SHM)
    return st.f_blocks * st.f_frsize


def keep_bytes(workers: int) -> int:
    """Free buffers each of a pool's `workers` keeps: `KEEP_BYTES`, less where all of them
    together would pass a quarter of /dev/shm."""
    shm = shm_bytes()
    return KEEP_BYTES if shm is None else min(KEEP_BYTES, shm // 4 // max(1, workers))


class FrameBuffers:
    def __init__(self, owner: int, keep_bytes: int = KEEP_BYTES, lent_bytes: int = LENT_BYTES):
        self.owner, self.keep_bytes, self.lent_bytes = owner, keep_bytes, lent_bytes
        self._numbers = itertools.count()
        self._unsent: list[tuple[int, torch.UntypedStorage]] = []  # this job's, so far
        self._lent: OrderedDict[int, torch.UntypedStorage] = OrderedDict()
        self._free: list[torch.UntypedStorage] = []  # oldest first
        self.reused = 0  # buffers handed out again (tests read it)

    def new(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, BufferId]:
        """uint8 tensor of `shape` in shared memory (contents undefined), and its id."""
        nbytes = math.prod(shape)
        storage = next((s for s in self._free if s.nbytes() == nbytes), None)
        if storage is not None:
            self._free.remove(storage)
            self.reused += 1
        else:
            storage = torch.UntypedStorage._new_shared(nbytes)
        number = next(self._numbers)
        self._unsent.append((number, storage))
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape), (self.owner, number)

    def sent(self) -> None:
        """This job's buffers left with its result: they are lent until handed back."""
        self._lent.update(self._unsent)
        self._unsent = []
        while _total(self._lent.values()) > self.lent_bytes:
            self._lent.popitem(last=False)

    def failed(self) -> None:
        """This job failed: nobody else saw its buffers, so they are free again."""
        self._free += [s for _, s in self._unsent]
        self._unsent = []
        self._trim()

    def returned(self, numbers: list[int]) -> None:
        """The consumer no longer reads these buffers (ids it got from this worker)."""
        for n in numbers:
            storage = self._lent.pop(n, None)
            if storage is not None:
                self._free.append(storage)
        self._trim()

    def _trim(self) -> None:
        while _total(self._free) > self.keep_bytes:
            self._free.pop(0)


def _total(storages) -> int:
    return sum(s.nbytes() for s in storages)
