"""The per-request media options the pipeline honours (the media part of api.md's request)."""

from __future__ import annotations

from dataclasses import dataclass

from media.image import DEFAULT_BUDGET


@dataclass(frozen=True)
class MediaOptions:
    media_type: str | None = None  # video | audio | image | document; None = sniff the bytes
    fps: float = 1.0
    max_frames: int = 512  # per chunk
    start_s: float | None = None
    end_s: float | None = None
    chunk_s: float | None = None  # None: max_frames / fps
    use_audio: bool = True
    image_budget: int = DEFAULT_BUDGET  # patches per image / page (docs/model.md §2.3)
    pages: tuple[int, int] | None = None  # a document's pages [first, end), 0-based; None: all


DEFAULT_OPTIONS = MediaOptions()
