"""The gateway's sniffing (media/sniff.py, no PyAV) against the worker's probe (media/probe.py):
the bytes alone name images, documents and plain audio; a container stays "av" (media_type
None) until the worker opens it, and the probe then agrees with everything sniff decided."""

from __future__ import annotations

import os

import pypdfium2 as pdfium
import pytest

from media.errors import MediaError
from media.limits import MediaLimits
from media.probe import kind_of
from media.sniff import AV, sniff
from tests.media.corpus import pattern_jpeg, subtitles_only, write_audio, write_video

LIMITS = MediaLimits()


def _pdf(path: str) -> str:
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(200, 200)
    pdf.save(path)
    return path


def _bytes(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


# name -> (writer(dir) -> path, sniffed kind, demuxer, the probe's kind)
FILES = {
    "mp4": (lambda d: write_video(f"{d}/a.mp4", container="mp4"), AV, "mov", "video"),
    "mkv": (lambda d: write_video(f"{d}/a.mkv", container="matroska"), AV, "matroska", "video"),
    "avi": (
        lambda d: write_video(f"{d}/a.avi", container="avi", codec="mpeg4"), AV, "avi", "video"
    ),
    "ogg_audio": (
        lambda d: write_audio(
            f"{d}/a.ogg", container="ogg", codec="libopus", rate=48000, channels=1, seconds=0.5
        ),
        AV, "ogg", "audio",
    ),
    "wav": (
        lambda d: write_audio(
            f"{d}/a.wav", container="wav", codec="pcm_s16le", rate=16000, channels=1, seconds=0.2
        ),
        "audio", "wav", "audio",
    ),
    "flac": (
        lambda d: write_audio(
            f"{d}/a.flac", container="flac", codec="flac", rate=16000, channels=1, seconds=0.2
        ),
        "audio", "flac", "audio",
    ),
    "mp3": (
        lambda d: write_audio(
            f"{d}/a.mp3", container="mp3", codec="libmp3lame", rate=16000, channels=1, seconds=0.2
        ),
        "audio", "mp3", "audio",
    ),
    "jpeg": (lambda d: _bytes(f"{d}/a.jpg", pattern_jpeg()), "image", None, "image"),
    "pdf": (lambda d: _pdf(f"{d}/a.pdf"), "document", None, "document"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FILES))
def test_sniff_names_what_the_bytes_tell_and_the_probe_agrees(tmp_path, name):
    write, kind, demuxer, probed = FILES[name]
    path = write(str(tmp_path))
    s = sniff(path, LIMITS)
    assert (s.kind, s.demuxer) == (kind, demuxer)
    assert s.media_type == (None if kind == AV else kind)
    assert kind_of(path, LIMITS).kind == probed


def test_a_container_with_no_video_or_audio_passes_sniffing_and_fails_at_the_probe(tmp_path):
    path = subtitles_only(str(tmp_path / "subs.mkv"))
    assert sniff(path, LIMITS).media_type is None
    with pytest.raises(MediaError) as err:
        kind_of(path, LIMITS)
    assert err.value.code == "media_unreadable" and "neither" in err.value.message


def test_size_and_emptiness_are_checked_before_any_byte_is_read(tmp_path):
    empty = _bytes(str(tmp_path / "e.png"), b"")
    with pytest.raises(MediaError) as err:
        sniff(empty, LIMITS)
    assert err.value.code == "media_unreadable"
    big = _bytes(str(tmp_path / "b.jpg"), pattern_jpeg())
    with pytest.raises(MediaError) as err:
        sniff(big, MediaLimits(max_file_bytes=os.path.getsize(big) - 1))
    assert err.value.code == "media_too_large"
