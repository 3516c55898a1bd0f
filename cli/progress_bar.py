"""A one-line progress bar on stderr, drawn only when stderr is a terminal (no dependency)."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    """A one-line bar on a terminal: files done, the current file, its stage."""

    WIDTH = 24

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty()
        self.done = 0
        self.name = ""

    def start(self, name: str) -> None:
        self.name = name
        self.stage("starting", 0, 0)

    def stage(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * self.done // max(self.total, 1)
        step = f" {done}/{total}" if total else ""
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}"
        self.stream.write(f"\r\033[K{line} {self.name}: {stage}{step}")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1
        self.stage("done", 0, 0)
        if self.enabled and self.done == self.total:
            self.stream.write("\n")
