"""Caps that keep one hostile or huge input from taking a worker down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_file_bytes: int = 4 << 30
    max_image_pixels: int = 80_000_000  # declared W·H, checked before any pixel is decoded
    max_duration_s: float = 4 * 3600.0
    max_pages: int = 200
    max_streams: int = 16
    max_video_pixels: int = 8192 * 8192  # per frame
    decode_timeout_s: float = 600.0


DEFAULT_LIMITS = MediaLimits()
