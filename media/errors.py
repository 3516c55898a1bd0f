"""Media failures, each carrying the stable `error.code` of docs/api.md.

The job boundary turns these into the job's `error {code, message}`; messages are written
for clients, so they never contain a server path or a traceback.
"""

from __future__ import annotations


class MediaError(Exception):
    """Base class: `code` is one of api.md's job error codes."""

    code = "media_unreadable"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        # Keeps the subclass (and so the code) when the error crosses the pool's pipe.
        return (type(self), (self.message,))


class MediaUnreadable(MediaError):
    """Corrupt, truncated, empty or undecodable input."""

    code = "media_unreadable"


class MediaUnsupported(MediaError):
    """A recognisable but unsupported format: playlists, concat files, archives, encrypted PDFs."""

    code = "media_unsupported"


class MediaTooLarge(MediaError):
    """Over a size cap: bytes, pixels, pages or streams."""

    code = "media_too_large"


class MediaTooLong(MediaError):
    """Over the duration cap."""

    code = "media_too_long"


class MediaTimeout(MediaError):
    """Decoding ran past its deadline; the pool killed the worker that ran it."""

    code = "timeout"
