"""Caps that keep one hostile or huge input from taking a worker down."""

from __future__ import annotations

from dataclasses import dataclass

from media.errors import MediaTooLarge


@dataclass(frozen=True)
class MediaLimits:
    max_file_bytes: int = 4 << 30
    max_image_pixels: int = 80_000_000  # declared W·H, checked before any pixel is decoded
    max_duration_s: float = 4 * 3600.0
    max_pages: int = 200
    max_streams: int = 16
    max_video_pixels: int = 8192 * 8192  # per frame
    decode_timeout_s: float = 600.0
    # Decoded pixels one file may hold at once: they travel to the GPU worker in shared
    # memory (the worker sets half of /dev/shm); None: no cap.
    max_decoded_bytes: int | None = None


DEFAULT_LIMITS = MediaLimits()


def check_decoded_bytes(nbytes: int, limits: MediaLimits) -> None:
    """Fail before decoding what would not fit in `max_decoded_bytes`."""
    cap = limits.max_decoded_bytes
    if cap is not None and nbytes > cap:
        raise MediaTooLarge(
            f"decoded, this input holds {nbytes / 1e9:.1f} GB of pixels at once, more than this "
            f"worker's {cap / 1e9:.1f} GB: use a lower fps or max_frames, or a shorter time "
            "range (start_s / end_s) per job"
        )
