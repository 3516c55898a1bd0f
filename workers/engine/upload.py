"""Copies queued requests' media to the GPU on a thread of its own, ahead of the engine.

A W-video clip is 158 MiB of uint8 frames. Whoever copies it from the pool's (pageable)
shared memory first stages it through pinned memory, a host memcpy on a host whose cores
decode video; done on the engine thread, that is time in which it launches nothing (the
encode stage was bound by its host thread: RESULTS.md session 18, 151 ms a clip against 102
ms of kernels). So this thread takes each request in the engine's queue order, waits until
the plan's upload bytes have room for it, stages it through pinned memory and copies it on a
stream of its own; the engine only ever finds its media on the GPU, unless it reached the
request first.

Copying every queued request once, in order, as room frees up, is what keeps a long queue
supplied: copied once at submit instead (until session 18), only requests submitted while
there was room went ahead; in a burst, the first few dozen took the room and the hundreds
submitted behind them reached the engine on the host.

The engine claims a request before it reads its items (`claim`): from then on this thread
does not touch it, and a copy that finishes after the claim is dropped. Uploaded media is
published with its bytes under the same lock, so the engine sees either the host items
and no bytes, or the GPU items, their bytes and the prompt's token layout pointing at them
(the splice finds each item's encoding by identity: omni.splice_prompt_embeds).

The copies' memory is allocated on the engine's stream, not the copying one: torch's
allocator caches freed blocks per stream, so memory allocated on a side stream would, once
the engine freed it, sit in a cache the engine cannot draw from; under the GPU_MEMORY_GB
cap its own allocations would then have to empty the caches and allocate afresh
(synchronising the device) again and again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from media.items import AudioItem, ImageItem, MediaItem, VideoItem, media_bytes
from workers.engine.stats import StageStats
from workers.model.omni import PromptTokens

log = logging.getLogger(__name__)


class Uploadable(Protocol):
    """What the uploader reads and sets on a queued request (engine.Prepared)."""

    items: list[MediaItem]
    tokens: PromptTokens  # its `visual` and `audio` are `items` (and their soundtracks)
    uploaded: int  # bytes of `items` on the GPU, to release once the engine lets go
    claimed: bool  # the engine reads `items` from now on: hands off


@dataclass(frozen=True)
class _Copy:
    """A request's media on its way to the GPU: `done` once the copies have run."""

    request: Uploadable
    items: list[MediaItem]  # as queued, on the host
    moved: list[MediaItem]  # their GPU copies
    nbytes: int
    done: torch.cuda.Event


class MediaUploader:
    def __init__(
        self,
        device: torch.device,
        max_bytes: int,
        stats: StageStats,
        on_uploaded: Callable[[Uploadable], None],
    ):
        """`on_uploaded(request)`: called, under the uploader's lock, once a request's items
        are on the GPU (the engine releases their host copies there)."""
        self.device, self.max_bytes, self.stats = device, max_bytes, stats
        self._on_uploaded = on_uploaded
        self._held = 0  # uploaded, not yet released by the engine
        self._queue: deque[Uploadable] = deque()
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
        self._thread.start()

    @property
    def held_bytes(self) -> int:
        return self._held

    def add(self, request: Uploadable) -> None:
        """Queue a request's media for copying (the engine's queue order)."""
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()

    def claim(self, request: Uploadable) -> None:
        """The engine takes `request`: its items and `uploaded` no longer change."""
        with self._cond:
            request.claimed = True
            self._cond.notify_all()  # a copy waiting for room for it gives up

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._held -= nbytes
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        """Start copies while requests and room allow; publish each once its copy has run,
        in order. Several are in flight at once: each waits on the GPU for the engine's work
        queued before it (`_copy`), so waiting for one before starting the next would
        upload a request per engine stage, slower than the engine encodes them."""
        stream = torch.cuda.Stream(self.device)
        inflight: deque[_Copy] = deque()
        while True:
            taken = self._next(wait=not inflight)
            if taken is not None:
                if (started := self._start(*taken, stream)) is not None:
                    inflight.append(started)
            elif self._closed:
                stream.synchronize()  # the copies' blocks go back to the engine's cache
                for c in inflight:
                    self.release(c.nbytes)
                return
            else:
                inflight[0].done.synchronize()  # nothing to start now: wait for the oldest
            while inflight and inflight[0].done.query():
                self._publish(inflight.popleft())

    def _next(self, wait: bool) -> tuple[Uploadable, list[MediaItem], int] | None:
        """The next unclaimed request with media that fits the cap, once there is room for
        it (its bytes then held); None once closed, or, unless `wait`, when no request has
        room now."""
        with self._cond:
            while not self._closed:
                if not self._queue:
                    if not wait:
                        return None
                    self._cond.wait()
                    continue
                request = self._queue[0]
                n = media_bytes(request.items) if not request.claimed else 0
                if not 0 < n <= self.max_bytes:
                    self._queue.popleft()
                    continue
                if self._held + n > self.max_bytes:
                    if not wait:
                        return None
                    self._cond.wait()  # a release, a claim or a close
                    continue
                self._queue.popleft()
                self._held += n
                return request, request.items, n
            return None

    def _start(self, request: Uploadable, items: list[MediaItem], n: int, stream) -> _Copy | None:
        try:
            moved = [self._to_device(i, stream) for i in items]
            done = torch.cuda.Event(blocking=True)  # waited on without spinning a core
            done.record(stream)
        except Exception as exc:  # the engine copies this request's media itself
            stream.synchronize()  # copies started before the error write into blocks freed now
            self.release(n)
            if isinstance(exc, torch.OutOfMemoryError):
                self.stats.count_oom("upload")
            else:
                log.warning("media upload failed; the engine copies it", exc_info=exc)
            return None
        return _Copy(request, items, moved, n, done)

    def _publish(self, c: _Copy) -> None:
        with self._cond:
            if c.request.claimed:  # the engine got there first, with the host items
                self._held -= c.nbytes
                self._cond.notify_all()
                return
            c.request.tokens = _pointing_at(c.request.tokens, c.items, c.moved)
            c.request.items, c.request.uploaded = c.moved, c.nbytes
            self.stats.uploaded_bytes += c.nbytes
            self._on_uploaded(c.request)

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
        staged = t.pin_memory()  # a memcpy on this thread, strides kept
        with torch.cuda.stream(stream):
            out.copy_(staged, non_blocking=True)
        return out


def _pointing_at(tokens: PromptTokens, old: list[MediaItem], new: list[MediaItem]) -> PromptTokens:
    """`tokens` with each of `old`'s items (and soundtracks) replaced by its copy in `new`."""
    copy_of = {}
    for a, b in zip(old, new, strict=True):
        copy_of[id(a)] = b
        if isinstance(a, VideoItem) and a.audio is not None:
            copy_of[id(a.audio)] = b.audio
    return replace(
        tokens,
        visual=[copy_of[id(i)] for i in tokens.visual],
        audio=[copy_of[id(i)] for i in tokens.audio],
    )
