"""What a file is, from its bytes (never its name), and the only way we open containers.

`sniff` maps magic numbers to (kind, demuxer). Containers are then opened with that exact
demuxer, a demuxer allow-list and `protocol_whitelist=file`, so a playlist (HLS), a concat
script or any format that can reference other files or URLs is never even probed. MPEG
transport streams (`.ts`, `.m2ts`: camcorders, broadcast, HLS segments) and program streams
(`.mpg`, `.vob`) are single self-contained files and are allowed; an HLS playlist that
names `.ts` segments is still a playlist, and refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av

from media.errors import MediaTooLarge, MediaUnreadable, MediaUnsupported
from media.limits import MediaLimits

IMAGE, VIDEO, AUDIO, DOCUMENT = "image", "video", "audio", "document"
DEMUXERS = ("mov", "matroska", "avi", "ogg", "wav", "flac", "mp3", "aac", "mpegts", "mpeg")
HEAD_BYTES = 1024  # what sniffing reads: five transport-stream packets
# MPEG-TS packet layouts: (packet size, offset of the 0x47 sync byte): plain 188-byte packets,
# Blu-ray/AVCHD .m2ts with a 4-byte timestamp before each, DVB's 204 with Reed-Solomon bytes
_TS_LAYOUTS = ((188, 0), (192, 4), (204, 0))
_TS_MIN_PACKETS = 3

_REJECT = (
    (b"#EXTM3U", "playlists (HLS, M3U) are not accepted"),
    (b"ffconcat", "concat scripts are not accepted"),
    (b"PK\x03\x04", "archives are not accepted"),
    (b"\x1f\x8b", "compressed archives are not accepted"),
    (b"BZh", "compressed archives are not accepted"),
    (b"\xfd7zXZ", "compressed archives are not accepted"),
    (b"7z\xbc\xaf", "archives are not accepted"),
)


@dataclass(frozen=True)
class Sniffed:
    kind: str  # image | video | audio | document; "av" until the streams are known
    demuxer: str | None  # ffmpeg demuxer name for audio/video, None for images/documents


def _is_transport_stream(head: bytes) -> bool:
    """A sync byte at the start of every packet the head holds (at least three of them)."""
    for size, offset in _TS_LAYOUTS:
        syncs = range(offset, len(head), size)
        if len(syncs) >= _TS_MIN_PACKETS and all(head[i] == 0x47 for i in syncs):
            return True
    return False


def _sniff_bytes(head: bytes) -> Sniffed:
    for magic, why in _REJECT:
        if head.startswith(magic):
            raise MediaUnsupported(why)
    if head.startswith(b"%PDF-"):
        return Sniffed(DOCUMENT, None)
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")):
        return Sniffed(IMAGE, None)
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Sniffed(IMAGE, None)
    if head[:4] == b"RIFF":
        sub = {b"WEBP": (IMAGE, None), b"WAVE": (AUDIO, "wav"), b"AVI ": ("av", "avi")}
        if head[8:12] in sub:
            return Sniffed(*sub[head[8:12]])
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return Sniffed("av", "mov")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("av", "matroska")
    if head.startswith(b"OggS"):
        return Sniffed("av", "ogg")
    if _is_transport_stream(head):
        return Sniffed("av", "mpegts")
    if head.startswith(b"\x00\x00\x01\xba"):  # an MPEG program stream's pack header
        return Sniffed("av", "mpeg")
    if head.startswith(b"fLaC"):
        return Sniffed(AUDIO, "flac")
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2):
        return Sniffed(AUDIO, "mp3")  # MPEG audio frame sync, layer bits != 00
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return Sniffed(AUDIO, "aac")  # ADTS
    raise MediaUnsupported("the file's format was not recognised")


def sniff(path: str, limits: MediaLimits) -> Sniffed:
    size = os.path.getsize(path)
    if size == 0:
        raise MediaUnreadable("the file is empty")
    if size > limits.max_file_bytes:
        raise MediaTooLarge("the file is larger than the size limit")
    with open(path, "rb") as f:
        return _sniff_bytes(f.read(HEAD_BYTES))


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
    if s.kind != "av":
        return s
    with open_container(path, s.demuxer, limits) as c:
        if any(v.disposition & av.stream.Disposition.attached_pic == 0 for v in c.streams.video):
            return Sniffed(VIDEO, s.demuxer)
        if c.streams.audio:
            return Sniffed(AUDIO, s.demuxer)
    raise MediaUnreadable("the file has neither a video nor an audio stream")
