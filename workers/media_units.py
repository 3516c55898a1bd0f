"""One input file -> the model calls it needs ("units") and the media part of the usage.

The media pipeline (`workers.media.pipeline.process`) gives the items: one image, one image
per document page, one VideoItem per chunk (with its soundtrack when `use_audio`), or one
AudioItem, cut into units of whole 30 s clips (the encoder sees the same clips either way).
The units become the segments of the result, so time-based units carry their time range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.media.items import AudioItem, ImageItem, MediaItem, VideoItem
from workers.media.limits import MediaLimits
from workers.media.options import MediaOptions
from workers.media.pool import MediaPool
from workers.media.probe import AUDIO, DOCUMENT, IMAGE, kind_of

CLIPS_PER_UNIT = 10  # 5 minutes of audio per model call


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


def decode(path: str, opts: MediaOptions, limits: MediaLimits, pool: MediaPool) -> Decoded:
    """Decode in the pool (a process per core, with a deadline per file) -> units + usage."""
    return to_units(path, opts, limits, pool.submit(path, opts).result())


def to_units(path: str, opts: MediaOptions, limits: MediaLimits, items: list[MediaItem]) -> Decoded:
    """The decoded items of `path` -> the model calls they make and the media usage."""
    kind = opts.media_type or kind_of(path, limits).kind
    if kind == IMAGE:
        return Decoded(kind, [Unit(items)], {"images": len(items)})
    if kind == DOCUMENT:
        units = [Unit([p], page=k + 1) for k, p in enumerate(items)]
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
