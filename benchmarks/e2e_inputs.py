"""The files of the standard workloads (docs/performance.md), generated once into a cache dir.

A few distinct files per workload; the jobs cycle through them (each job still decodes its
own copy from disk). Generation is deterministic and runs in a process pool, since one
1-minute 720p clip takes a core a minute or more to encode.

  W-video: 1-minute 1280×720 30 fps H.264 + AAC 48 kHz stereo, GOP 2 s (benchmarks.media).
  W-doc:   20-page PDFs, pages 1024×1536 (1 px = 1 pt) of headings, text lines, a table, a box.
  W-audio: 10-minute 16 kHz mono WAV of voiced syllables, fricative noise and pauses.
`small` gives one short stand-in each for the CPU smoke run: a 4 s 640×360 clip, a 2-page
PDF, 20 s of audio.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from benchmarks.media import make_clip
from scripts.make_samples import write_video

DISTINCT = 4  # files per workload
PAGE_W, PAGE_H, PAGES = 1024, 1536, 20
AUDIO_S, SMALL_AUDIO_S, RATE = 600, 20, 16000


def make_pdf(path: str, pages: int, seed: int) -> None:
    """Pages of dark text on white: a heading, paragraphs of word-like strokes, a table."""
    rng = np.random.default_rng(seed)
    images = []
    for n in range(pages):
        page = Image.new("RGB", (PAGE_W, PAGE_H), "white")
        draw = ImageDraw.Draw(page)
        draw.text((80, 70), f"Report {seed} - section {n + 1}", fill="black")
        y = 160
        while y < PAGE_H - 420:
            x = 80
            while x < PAGE_W - 120:  # one "word": a run of letters
                word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10)))
                draw.text((x, y), word, fill="black")  # PIL's built-in bitmap font
                x += 6 * len(word) + 7
            y += 16 if rng.random() > 0.15 else 32  # paragraph break
        for r in range(6):  # a table with numbers
            for c in range(4):
                x0, y0 = 80 + 210 * c, PAGE_H - 380 + 45 * r
                draw.rectangle((x0, y0, x0 + 210, y0 + 45), outline="black")
                draw.text((x0 + 10, y0 + 12), f"{rng.integers(0, 10**5)}", fill="black")
        draw.ellipse((PAGE_W - 200, 60, PAGE_W - 80, 180), outline="navy", width=4)
        images.append(page)
    images[0].save(path, save_all=True, append_images=images[1:], resolution=72.0)


def make_speech_wav(path: str, seconds: float, seed: int) -> None:
    """Syllables of a gliding harmonic voice, fricative noise bursts, and pauses between phrases."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.25 * t) + 20 * rng.standard_normal() ** 2
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 4.5 * t + rng.uniform(0, 6)), 0, None) ** 2
    phrases = (np.sin(2 * np.pi * t / 7 + rng.uniform(0, 6)) > -0.6).astype(np.float32)
    hiss = rng.standard_normal(t.shape) * (np.sin(2 * np.pi * 1.3 * t) > 0.9)
    wave = phrases * (0.25 * voice * syllables + 0.05 * hiss) + 0.003 * rng.standard_normal(t.shape)
    sf.write(path, wave.astype(np.float32), RATE, subtype="PCM_16")


def _make(kind: str, path: str, seed: int, small: bool) -> None:
    tmp = f"{path}.tmp{Path(path).suffix}"
    if kind == "video" and small:
        write_video(Path(tmp), seconds=4.0, fps=30, size=(640, 360))
    elif kind == "video":
        make_clip(tmp, seed)
    elif kind == "doc":
        make_pdf(tmp, 2 if small else PAGES, seed)
    else:
        make_speech_wav(tmp, SMALL_AUDIO_S if small else AUDIO_S, seed)
    os.replace(tmp, path)


def workload_files(kind: str, cache: Path, small: bool) -> list[str]:
    """The distinct input files of workload `kind` (video | doc | audio), made if missing."""
    ext = {"video": "mp4", "doc": "pdf", "audio": "wav"}[kind]
    folder = cache / ("small" if small else "full")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"w_{kind}_{seed}.{ext}") for seed in range(1 if small else DISTINCT)]
    missing = [(p, s) for s, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        print(f"generating {len(missing)} W-{kind} input(s) in {folder} (once)", flush=True)
        workers = min(len(missing), os.cpu_count() or 1)
        if workers == 1:
            for p, s in missing:
                _make(kind, p, s, small)
            return paths
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            done = [ex.submit(_make, kind, p, s, small) for p, s in missing]
            for f in done:
                f.result()
    return paths
