"""What a file is, from its bytes (never its name): the gateway's check, without PyAV.

`sniff` maps magic numbers to (kind, demuxer). Images, PDF documents and plain audio
streams (WAV, FLAC, MP3, ADTS AAC) are known from their bytes alone; a container that may
hold video or audio (MP4/MOV, Matroska/WebM, AVI, Ogg, MPEG transport and program streams)
is "av" until media/probe.py opens it and looks at its streams, which only the worker does.
Playlists (HLS), concat scripts and archives are refused here, before anything opens them.
MPEG transport streams (`.ts`, `.m2ts`: camcorders, broadcast, HLS segments) and program
streams (`.mpg`, `.vob`) are single self-contained files and are allowed; an HLS playlist
that names `.ts` segments is still a playlist, and refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from media.errors import MediaTooLarge, MediaUnreadable, MediaUnsupported
from media.limits import MediaLimits

IMAGE, VIDEO, AUDIO, DOCUMENT = "image", "video", "audio", "document"
AV = "av"  # a container: video, or audio only, once its streams are seen
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
    kind: str  # image | video | audio | document, or AV until the streams are known
    demuxer: str | None  # ffmpeg demuxer name for audio/video, None for images/documents

    @property
    def media_type(self) -> str | None:
        """A job's `media_type` as far as the bytes tell: None for a container, whose kind the
        worker records once it has opened it."""
        return None if self.kind == AV else self.kind


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
        sub = {b"WEBP": (IMAGE, None), b"WAVE": (AUDIO, "wav"), b"AVI ": (AV, "avi")}
        if head[8:12] in sub:
            return Sniffed(*sub[head[8:12]])
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return Sniffed(AV, "mov")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed(AV, "matroska")
    if head.startswith(b"OggS"):
        return Sniffed(AV, "ogg")
    if _is_transport_stream(head):
        return Sniffed(AV, "mpegts")
    if head.startswith(b"\x00\x00\x01\xba"):  # an MPEG program stream's pack header
        return Sniffed(AV, "mpeg")
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
