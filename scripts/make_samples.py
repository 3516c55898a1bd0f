"""Write the bundled sample media: a short MP4 with a soundtrack, a WAV, a PNG and a PDF.

`python scripts/make_samples.py [DIR]` (default `samples/`). The same writers build the media
of the end-to-end tests. Content is synthetic and deterministic: moving shapes, a chirp.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

AUDIO_RATE = 16000


def _frame(i: int, width: int, height: int) -> np.ndarray:
    """An RGB frame [H, W, 3] uint8: a gradient background with a square that moves."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 96)], axis=-1)
    side = height // 4
    left = (i * 7) % (width - side)
    img[height // 3 : height // 3 + side, left : left + side] = (240, 220, 40)
    return img.astype(np.uint8)


def _tone(seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """A speech-band chirp [n] float32 with a syllable-like envelope."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


def write_video(path: Path, seconds: float = 2.0, fps: int = 8, size=(96, 64)) -> Path:
    """H.264 + AAC MP4 of `seconds` length."""
    width, height = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(_frame(i, width, height), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        samples = _tone(seconds)
        step = 1024
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = AUDIO_RATE
            frame.pts = start
            frame.time_base = Fraction(1, AUDIO_RATE)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path


def write_wav(path: Path, seconds: float = 2.0) -> Path:
    """16-bit mono PCM WAV."""
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono")
        pcm = (_tone(seconds) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_png(path: Path, size=(128, 96)) -> Path:
    Image.fromarray(_frame(5, *size)).save(path)
    return path


def write_pdf(path: Path, pages: int = 2) -> Path:
    """A PDF of `pages` rendered text pages (small, letter-like aspect)."""
    images = []
    for n in range(pages):
        page = Image.new("RGB", (170, 220), "white")
        draw = ImageDraw.Draw(page)
        draw.text((12, 12), f"omnibatch sample, page {n + 1}", fill="black")
        for row in range(4):
            draw.line((12, 40 + 20 * row, 150, 40 + 20 * row), fill="gray")
        images.append(page)
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


def write_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_video(folder / "clip.mp4"),
        write_wav(folder / "speech.wav"),
        write_png(folder / "picture.png"),
        write_pdf(folder / "document.pdf"),
    ]


if __name__ == "__main__":
    for written in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "samples")):
        print(f"{written}  {written.stat().st_size} bytes")
