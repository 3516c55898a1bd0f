"""The hostile / broken inputs and the error code each must fail with."""

from __future__ import annotations

import os

import numpy as np
import pypdfium2 as pdfium
from PIL import Image

from tests.media.corpus import (
    encrypted_pdf,
    faststart_copy,
    pattern_jpeg,
    png_declaring,
    subtitles_only,
    write_video,
    zip_bomb,
)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build(d: str) -> dict[str, tuple[str, str]]:
    """{name: (path, expected error code)} written under directory d."""

    def put(name: str, data: bytes) -> str:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    video = write_video(os.path.join(d, "good.mp4"), frames=30, fps=10)
    data = _read(video)
    fast = _read(faststart_copy(video, os.path.join(d, "fast.mp4")))
    jpeg = pattern_jpeg()
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(200, 200)
    pdf.save(os.path.join(d, "ok.pdf"))
    pdf_bytes = _read(os.path.join(d, "ok.pdf"))
    return {
        "truncated_mp4": (put("trunc.mp4", fast[: len(fast) * 6 // 10]), "media_unreadable"),
        "missing_moov": (put("nomoov.mp4", data[: data.find(b"moov") - 4]), "media_unreadable"),
        "no_av_streams": (subtitles_only(os.path.join(d, "subs.mkv")), "media_unreadable"),
        "random_bytes": (
            put("random.mp4", np.random.default_rng(7).bytes(4096)),
            "media_unsupported",
        ),
        "empty": (put("empty.mp4", b""), "media_unreadable"),
        "png_100000x100000": (put("huge.png", png_declaring(100000, 100000)), "media_too_large"),
        "truncated_jpeg": (put("trunc.jpg", jpeg[: len(jpeg) // 2]), "media_unreadable"),
        "truncated_pdf": (put("trunc.pdf", pdf_bytes[: len(pdf_bytes) // 2]), "media_unreadable"),
        "encrypted_pdf": (encrypted_pdf(os.path.join(d, "enc.pdf")), "media_unsupported"),
        "hls_playlist": (
            put(
                "list.mp4",
                b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
            ),
            "media_unsupported",
        ),
        "ffconcat": (
            put("concat.mkv", b"ffconcat version 1.0\nfile '/etc/passwd'\n"),
            "media_unsupported",
        ),
        "zip_bomb": (zip_bomb(os.path.join(d, "bomb.mp4")), "media_unsupported"),
    }


def good_image(d: str) -> str:
    path = os.path.join(d, "fine.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(path)
    return path
