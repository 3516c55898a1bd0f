"""The media process pool as the end-to-end benchmark drives it.

Each worker also turns the items into units (`media_units.to_units`: the units and media
usage the pipeline builds a job from), and reports the CPU and
wall seconds it spent on the job, measured inside the worker so queueing is not counted.
Frames arrive in the workers' shared buffers, recycled as in the service (`MediaPool`).
"""

from __future__ import annotations

import time

from workers.media.errors import MediaError, MediaUnreadable
from workers.media.frame_buffers import FrameBuffers
from workers.media.limits import MediaLimits
from workers.media.options import MediaOptions
from workers.media.pool import MediaPool, decode_job
from workers.media.video_decode import DecodeConfig
from workers.media_units import Decoded, to_units


def units_job(
    path: str, opts: MediaOptions, limits: MediaLimits, cfg: DecodeConfig, shared: FrameBuffers
) -> tuple[Decoded, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        decoded = to_units(opts, decode_job(path, opts, limits, cfg, shared))
    except MediaError:
        raise
    except Exception as e:  # a benchmark wants the reason, not a generic message
        raise MediaUnreadable(f"{path}: {e!r}") from e
    return decoded, time.process_time() - cpu, time.perf_counter() - wall


class UnitPool(MediaPool):
    """MediaPool whose futures give (Decoded, cpu_seconds, wall_seconds)."""

    job = staticmethod(units_job)
