"""One input file -> the model calls it needs ("units") and the media part of the usage.

The media pipeline (`media.pipeline.process`) gives the items: one image, one image
per document page, one VideoItem per chunk (with its soundtrack when `use_audio`), or one
AudioItem, cut into units of whole 30 s clips (the encoder sees the same clips either way).
The units become the segments of the result, so time-based units carry their time range.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial

from media.document import PAGE_BYTES_PER_PATCH
from media.frame_buffers import BufferId
from media.items import (
    AudioItem,
    ImageItem,
    MediaItem,
    VideoItem,
    frame_buffers,
    media_bytes,
)
from media.options import MediaOptions
from media.pool import MediaPool
from media.sniff import AUDIO, DOCUMENT, IMAGE, VIDEO
from workers.media_budget import MediaBudget

CLIPS_PER_UNIT = 10  # 5 minutes of audio per model call
PART_BYTES = 1 << 31  # decoded pixels of one part of a long video or document, at most


@dataclass
class Unit:
    items: list[ImageItem | VideoItem | AudioItem]
    start_s: float | None = None
    end_s: float | None = None
    page: int | None = None


@dataclass
class Decoded:
    kind: str  # image | video | audio | document
    units: list[Unit]
    usage: dict = field(default_factory=dict)


def audio_units(audio: AudioItem) -> list[Unit]:
    """Long audio in groups of whole 30 s clips, so one answer never has to cover an hour."""
    units, start = [], 0
    for a in range(0, len(audio.clips), CLIPS_PER_UNIT):
        samples = audio.clip_samples[a : a + CLIPS_PER_UNIT]
        part = AudioItem(audio.clips[a : a + CLIPS_PER_UNIT], sum(samples), samples)
        units.append(Unit([part], start / 16000, (start + part.num_samples) / 16000))
        start += part.num_samples
    return units


def decode(
    path: str,
    opts: MediaOptions,
    pool: MediaPool,
    budget: MediaBudget,
    part_bytes: int = PART_BYTES,
) -> Iterator[Decoded]:
    """Decode in the pool (a process per core, with its limits and a deadline per file) ->
    parts of units + usage, in order; each counts in `budget` from when it lands until its
    caller releases it.

    A video longer than its first chunk is decoded in parts of whole chunks, each part's
    frames at most `part_bytes` (one chunk at least), a document in parts of pages (at most
    `part_bytes` at its page budget), several parts at once: a long input never holds all
    its pixels, and its decoding spreads over the pool. A video's chunks are the ones a
    single decode of the whole range gives (the same start, the same step, added up the
    same way).
    """
    # The first part is a video's first chunk or a document's first pages (other media ignore
    # both); what the file is shows in what comes back: nothing parses it outside the pool.
    step = opts.chunk_s or opts.max_frames / opts.fps
    first_end = (opts.start_s or 0.0) + step
    pages = max(1, part_bytes // (opts.image_budget * PAGE_BYTES_PER_PATCH))
    first = replace(
        opts,
        end_s=first_end if opts.end_s is None else min(first_end, opts.end_s),
        pages=(0, pages),
    )
    budget.start()
    part = _land(first, pool.submit(path, first), budget)
    rest = _rest(part, opts, first, step, pages, part_bytes)  # before the caller takes the items
    yield part
    running: deque[tuple[MediaOptions, Future]] = deque()
    try:
        while rest or running:
            while rest:
                if not running:
                    budget.start()  # waits while other jobs' media fill the budget
                elif not budget.try_start():
                    break
                part_opts = rest.popleft()
                running.append((part_opts, pool.submit(path, part_opts)))
            part_opts, f = running.popleft()
            yield _land(part_opts, f, budget)
    finally:  # stopped early (cancel, a failed part): what is still decoding lands unused
        for _, f in running:
            f.add_done_callback(partial(_discard, budget, pool))


def _rest(
    first: Decoded, opts: MediaOptions, done: MediaOptions, step: float, pages: int, part_bytes: int
) -> deque[MediaOptions]:
    """The options of the parts after the first: whole chunks, or pages, each."""
    if first.kind == DOCUMENT:
        n = first.units[0].items[0].doc_pages
        return deque(replace(opts, pages=(a, a + pages)) for a in range(pages, n, pages))
    if first.kind != VIDEO:
        return deque()
    video = first.units[0].items[0]
    end = video.video_s if opts.end_s is None else min(video.video_s, opts.end_s)
    per_part = max(1, part_bytes // max(1, media_bytes([video])))
    rest, a = deque(), done.end_s
    while a < end - 1e-9:
        b = a
        for _ in range(per_part):
            b = min(b + step, end)  # as plan_chunks adds them up
        rest.append(replace(opts, start_s=a, end_s=b))
        a = b
    return rest


def _land(opts: MediaOptions, f: Future, budget: MediaBudget) -> Decoded:
    try:
        decoded = to_units(opts, f.result())
    except BaseException:
        budget.landed(None)
        raise
    budget.landed(sum(media_bytes(u.items) for u in decoded.units))
    return decoded


def _kind(items: list[MediaItem]) -> str:
    item = items[0]  # `process` gives at least one item or raises
    if isinstance(item, VideoItem):
        return VIDEO
    if isinstance(item, AudioItem):
        return AUDIO
    return DOCUMENT if item.doc_pages else IMAGE


def _discard(budget: MediaBudget, pool: MediaPool, f: Future) -> None:
    if f.cancelled() or f.exception() is not None:
        budget.landed(None)
        return
    items = f.result()
    budget.landed(media_bytes(items))
    host_release(budget, pool, items)()


def host_release(
    budget: MediaBudget, pool: MediaPool, items: list[MediaItem]
) -> Callable[[], None]:
    """What to call once nothing reads `items` on the host any more (an engine request's
    `on_host_release`): their bytes leave `budget`, their frame buffers go back to `pool`."""
    return partial(_release, budget, pool, media_bytes(items), frame_buffers(items))


def _release(budget: MediaBudget, pool: MediaPool, nbytes: int, buffers: list[BufferId]) -> None:
    budget.release(nbytes)
    pool.recycle(buffers)


def to_units(opts: MediaOptions, items: list[MediaItem]) -> Decoded:
    """A file's decoded items (`process` with `opts`) -> the model calls they make and the
    media usage. What the file is shows in the items: nothing parses it again here."""
    kind = _kind(items)
    if kind == IMAGE:
        return Decoded(kind, [Unit(items)], {"images": len(items)})
    if kind == DOCUMENT:
        first = opts.pages[0] if opts.pages is not None else 0
        units = [Unit([p], page=first + k + 1) for k, p in enumerate(items)]
        return Decoded(kind, units, {"pages": len(items)})
    if kind == AUDIO:
        (audio,) = items
        return Decoded(kind, audio_units(audio), {"audio_seconds": audio.seconds})
    usage = {
        "video_seconds": sum(v.end_s - v.start_s for v in items),
        "frames_sampled": sum(len(v.timestamps) for v in items),
        "audio_seconds": sum(v.audio.seconds for v in items if v.audio is not None),
    }
    return Decoded(kind, [Unit([v], v.start_s, v.end_s) for v in items], usage)
