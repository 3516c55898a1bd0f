"""Streaming one input to disk as it arrives (an upload, a URL download, a batch file).

Inputs are written by the gateway only; the worker reads them through contract/storage.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from service.errors import PayloadTooLarge

HEAD_BYTES = 4096  # kept in memory for content sniffing


class InputSink:
    """Streams one input to disk: enforces the byte cap as chunks arrive, hashes, keeps the head.

    Use as a context manager; leaving it with an exception removes the partial file.
    """

    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self.head = b""
        self._sha = hashlib.sha256()
        self._tmp = path.with_name(path.name + ".part")
        self._file = None

    def __enter__(self) -> InputSink:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"the input is larger than {self.max_bytes} bytes")
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self._sha.update(chunk)
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            shutil.rmtree(self.path.parent, ignore_errors=True)
