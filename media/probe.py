"""The only way we open containers, and what an "av" container holds (video or audio).

Containers are opened with the exact demuxer media/sniff.py named from the bytes, a demuxer
allow-list and `protocol_whitelist=file`, so a playlist (HLS), a concat script or any
format that can reference other files or URLs is never even probed.
"""

from __future__ import annotations

import av

from media.errors import MediaTooLarge, MediaUnreadable, MediaUnsupported
from media.limits import MediaLimits
from media.sniff import AUDIO, AV, VIDEO, Sniffed, sniff

DEMUXERS = ("mov", "matroska", "avi", "ogg", "wav", "flac", "mp3", "aac", "mpegts", "mpeg")


def open_container(path: str, demuxer: str, limits: MediaLimits) -> av.container.InputContainer:
    """Open with exactly `demuxer`; refuse anything that would read beyond this one file."""
    if demuxer not in DEMUXERS:
        raise MediaUnsupported("the container format is not supported")
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(DEMUXERS)}
    try:
        container = av.open(path, format=demuxer, options=options, timeout=30.0)
    except av.error.FFmpegError as e:
        raise MediaUnreadable("the media container could not be read") from e
    if len(container.streams) > limits.max_streams:
        container.close()
        raise MediaTooLarge("the file has more streams than allowed")
    return container


def kind_of(path: str, limits: MediaLimits) -> Sniffed:
    """Resolve "av" containers to video (a real video stream) or audio."""
    s = sniff(path, limits)
    if s.kind != AV:
        return s
    with open_container(path, s.demuxer, limits) as c:
        if any(v.disposition & av.stream.Disposition.attached_pic == 0 for v in c.streams.video):
            return Sniffed(VIDEO, s.demuxer)
        if c.streams.audio:
            return Sniffed(AUDIO, s.demuxer)
    raise MediaUnreadable("the file has neither a video nor an audio stream")
