"""The media process pool as the end-to-end benchmark drives it.

Each worker also turns the items into units (`media_units.to_units`: the units and media
usage the pipeline builds a job from), and reports the CPU and
wall seconds it spent on the job, measured inside the worker so queueing is not counted.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection

import torch

from workers.media.errors import MediaError, MediaUnreadable
from workers.media.limits import MediaLimits
from workers.media.pipeline import process
from workers.media.pool import MediaPool, _Worker
from workers.media_units import to_units


def _serve_units(conn: Connection, limits: MediaLimits) -> None:
    torch.set_num_threads(1)  # one core per worker, as in MediaPool
    while (job := conn.recv()) is not None:
        path, opts = job
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            decoded = to_units(opts, process(path, opts, limits))
            conn.send((True, (decoded, time.process_time() - cpu, time.perf_counter() - wall)))
        except MediaError as e:
            conn.send((False, e))
        except Exception as e:  # a benchmark wants the reason, not a generic message
            conn.send((False, MediaUnreadable(f"{path}: {e!r}")))


class UnitPool(MediaPool):
    """MediaPool whose futures give (Decoded, cpu_seconds, wall_seconds)."""

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve_units, args=(child, self.limits), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)
