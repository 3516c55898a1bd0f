"""Copies a request's media to the GPU on the submitting thread, ahead of the engine.

A W-video clip is 158 MiB of uint8 frames; copied from the pool's (pageable) shared memory
it takes ≈ 23 ms (measured on the H200), time in which the engine thread, which does the
copy when the items reach it on the host, launches nothing. Done here, each job thread
copies its own items on a stream of its own while the engine keeps the GPU busy. The
bytes on the GPU that the engine has not yet encoded are capped: past the cap, items stay
on the host and the engine copies them as before.

The copies' memory is allocated on the engine's stream, not the copying one: torch's
allocator caches freed blocks per stream, so memory allocated on 64 job threads' streams
would, once the engine freed it, sit in 64 caches the engine cannot draw from; under the
GPU_MEMORY_GB cap its own allocations would then have to empty every cache and allocate
afresh (synchronising the device) again and again.

Each copy is staged through pinned host memory (torch's caching host allocator keeps the
blocks for the next copies, as many as were in flight at once); copied straight from
pageable memory, the driver stages the bytes inside the copy call, which holds the job
thread ≈ 54 ms a clip and waits there for the engine's queued work (H200,
benchmarks/RESULTS.md session 18: 5.5 ms through pinned memory).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import torch

from media.items import AudioItem, ImageItem, MediaItem, media_bytes
from workers.engine.stats import StageStats


class MediaUploader:
    def __init__(self, device: torch.device, max_bytes: int, stats: StageStats):
        self.device, self.max_bytes, self.stats = device, max_bytes, stats
        self._held = 0  # uploaded, not yet released by the engine
        self._lock = threading.Lock()
        self._local = threading.local()  # one copy stream per submitting thread

    def upload(self, items: list[MediaItem]) -> tuple[list[MediaItem], int]:
        """(the items with their tensors on the GPU, bytes to `release` once encoded); the
        items unchanged and 0 when the cap would be passed, or the GPU has no block free for
        them now (the engine copies them when it gets to them)."""
        n = media_bytes(items)
        with self._lock:
            if self._held + n > self.max_bytes:
                return items, 0
            self._held += n
        try:
            stream = getattr(self._local, "stream", None)
            if stream is None:
                stream = self._local.stream = torch.cuda.Stream(self.device)
            moved = [self._to_device(i, stream) for i in items]
            stream.synchronize()  # the engine may use them as soon as they are queued
        except torch.OutOfMemoryError:
            self.release(n)
            self.stats.count_oom("upload")
            return items, 0
        except BaseException:
            self.release(n)
            raise
        return moved, n

    @property
    def held_bytes(self) -> int:
        return self._held

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes

    def _to_device(self, item: MediaItem, stream: torch.cuda.Stream) -> MediaItem:
        if isinstance(item, ImageItem):
            return replace(item, pixels=self._copy(item.pixels, stream))
        if isinstance(item, AudioItem):
            return replace(item, clips=[self._copy(c, stream) for c in item.clips])
        audio = self._to_device(item.audio, stream) if item.audio is not None else None
        return replace(item, tubelets=self._copy(item.tubelets, stream), audio=audio)

    def _copy(self, t: torch.Tensor, stream: torch.cuda.Stream) -> torch.Tensor:
        # allocated on this thread's current stream, the engine's (the default one); strides
        # kept, so a channels-last view stays one dense copy
        out = torch.empty_like(t, device=self.device)
        # The block came from the engine stream's cache: kernels the engine queued before
        # freeing it may still read it, so the copy waits for what is queued by now.
        stream.wait_stream(torch.cuda.default_stream(self.device))
        staged = t.pin_memory()  # a memcpy on this thread, strides kept (module docstring)
        with torch.cuda.stream(stream):
            out.copy_(staged, non_blocking=True)
        return out
