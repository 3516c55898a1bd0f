"""Tiny media files the tests generate with PyAV (deterministic content)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def frame_pattern(i: int, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3]: a gradient background with a bright block that moves with i."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), np.full_like(x, 60)], -1
    )
    bx, by = (i * 5) % max(1, width - 8), (i * 3) % max(1, height - 8)
    img[by : by + 8, bx : bx + 8] = 250
    return img.astype(np.uint8)


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """float32 [channels, n] sine, each channel at a different frequency."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]).astype(
        np.float32
    )


def write_video(
    path: str,
    *,
    container: str | None = None,
    codec: str = "libx264",
    width: int = 64,
    height: int = 48,
    frames: int = 6,
    fps: int = 10,
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts: list[int] | None = None,
    gop: int | None = None,
    audio: list[tuple[str, int, int]] = (),
    options: dict | None = None,
    container_options: dict | None = None,
) -> str:
    """Encode `frames` pattern frames; `pts` (in 1/fps·1/100 units) makes a VFR/offset stream.

    audio: [(codec, sample_rate, channels)] adds that many audio tracks of length frames/fps.
    options: the video encoder's; container_options: the muxer's.
    """
    with av.open(path, "w", format=container, options=container_options or {}) as out:
        vs = out.add_stream(codec, rate=fps, options=options or {})
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        if gop:
            vs.codec_context.gop_size = gop
        if pts is not None:
            vs.codec_context.time_base = Fraction(1, fps * 100)
        if rotation is not None:
            vs.set_display_rotation(rotation)
        streams = [
            (out.add_stream(c, rate=r, layout="mono" if ch == 1 else "stereo"), r, ch)
            for c, r, ch in audio
        ]
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, fps * 100)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        for s, rate, ch in streams:
            _write_audio(out, s, tone(frames / fps, rate, ch))
    return path


def _write_audio(out, stream, samples: np.ndarray) -> None:
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    size = stream.codec_context.frame_size or 1024
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    for pos in range(0, samples.shape[1], size):
        chunk = samples[:, pos : pos + size]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts = stream.codec_context.sample_rate, pos
        if fmt != "fltp":
            frame = av.AudioResampler(format=fmt, layout=layout, rate=frame.sample_rate).resample(
                frame
            )[0]
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)


def write_audio(
    path: str, *, container: str | None, codec: str, rate: int, channels: int, seconds: float
) -> str:
    with av.open(path, "w", format=container) as out:
        # FFmpeg's native Vorbis encoder is marked experimental
        opts = {"strict": "experimental"} if codec == "vorbis" else {}
        s = out.add_stream(
            codec, rate=rate, layout="mono" if channels == 1 else "stereo", options=opts
        )
        _write_audio(out, s, tone(seconds, rate, channels))
    return path


def encrypted_pdf(path: str) -> str:
    """A one-page PDF whose standard security handler needs a user password we never give."""
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <"
        + b"11" * 32
        + b"> /U <"
        + b"22" * 32
        + b"> /P -4 >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\n" % (
        len(objs) + 1,
        b"ab" * 16,
        b"ab" * 16,
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    with open(path, "wb") as f:
        f.write(out)
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height but carries almost no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zip_bomb(path: str) -> str:
    """A few KB of zip that inflates to 64 MB of zeros."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\x00" * (64 << 20))
    return path


def faststart_copy(src: str, dst: str) -> str:
    """Remux an MP4 with its index (moov) first, so a truncated copy still opens."""
    with av.open(src) as i, av.open(dst, "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for pk in i.demux(i.streams.video[0]):
            if pk.dts is not None:
                pk.stream = s
                o.mux(pk)
    return dst


def subtitles_only(path: str) -> str:
    """A Matroska file whose one stream is a subtitle: a container with no video or audio."""
    srt = path + ".srt"
    with open(srt, "w") as f:
        f.write("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n")
    with av.open(srt) as i, av.open(path, "w", format="matroska") as o:
        s = o.add_stream_from_template(i.streams.subtitles[0])
        for pk in i.demux(i.streams.subtitles[0]):
            if pk.dts is not None:
                pk.stream = s
                o.mux(pk)
    return path


def pattern_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame_pattern(0, 64, 48)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
