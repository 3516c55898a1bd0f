"""The long-input mix's files (benchmarks/memory_mix.py), made once into a cache dir.

  long video: W-video's 1-minute 1280×720 30 fps H.264 + AAC clips (e2e_inputs), stream-copied
              one after another into one file (no re-encode: seconds, not an hour of x264);
  document:   a PDF of 1024×1536 pages (e2e_inputs.make_pdf);
  audio:      a 16 kHz mono speech-like WAV (e2e_inputs.make_speech_wav);
  portrait:   a 1080×1920 30 fps H.264 + AAC clip;
  photo:      a 4000×3000 PNG.
Each kind is generated in a process pool, all kinds at once; files already in the cache stay.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from benchmarks.e2e_inputs import make_pdf, make_speech_wav, workload_files
from scripts.make_samples import write_video


@dataclass(frozen=True)
class MixSizes:
    video_minutes: int = 20
    pages: int = 160
    audio_minutes: int = 60
    portrait_s: float = 10.0
    photo: tuple[int, int] = (4000, 3000)  # width, height
    small: bool = False  # the W-video stand-in clips (e2e_inputs `small`: 4 s, 640×360)


SMALL = MixSizes(video_minutes=1, pages=3, audio_minutes=1, portrait_s=2.0, photo=(400, 300),
                 small=True)  # fmt: skip


def concat_stream_copy(paths: list[str], out_path: str) -> None:
    """Files with the same streams (same encoder settings) -> one file, packets copied: each
    file's packets follow the previous file's on every stream (decode times shifted so each
    stream runs on without a gap or an overlap)."""
    tmp = f"{out_path}.tmp{Path(out_path).suffix}"
    with av.open(paths[0]) as first, av.open(tmp, "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in first.streams
                   if s.type in ("video", "audio")}  # fmt: skip
        next_dts = dict.fromkeys(streams, 0)
        for path in paths:
            shift: dict[int, int] = {}
            with av.open(path) as src:
                for pkt in src.demux():
                    i = pkt.stream.index
                    if i not in streams or pkt.dts is None:
                        continue
                    shift.setdefault(i, next_dts[i] - pkt.dts)
                    pkt.dts += shift[i]
                    pkt.pts = pkt.pts + shift[i] if pkt.pts is not None else None
                    next_dts[i] = pkt.dts + max(pkt.duration or 0, 1)
                    pkt.stream = streams[i]
                    out.mux(pkt)
    os.replace(tmp, out_path)


def make_photo(path: str, size: tuple[int, int], seed: int) -> None:
    """A photo-like RGB PNG: smooth gradients, a few discs, mild noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 200, y / h * 180, (x + y) / (w + h) * 120 + 40], -1)
    for _ in range(6):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 20, h // 5)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, compress_level=1)


def _make(kind: str, path: str, seed: int, sizes: MixSizes) -> None:
    tmp = f"{path}.tmp{Path(path).suffix}"
    if kind == "document":
        make_pdf(tmp, sizes.pages, seed)
    elif kind == "audio":
        make_speech_wav(tmp, 60.0 * sizes.audio_minutes, seed)
    elif kind == "portrait":
        write_video(Path(tmp), seconds=sizes.portrait_s, fps=30, size=(1080, 1920))
    else:
        make_photo(tmp, sizes.photo, seed)
    os.replace(tmp, path)


def mix_files(cache: Path, sizes: MixSizes, distinct: int = 2) -> dict[str, list[str]]:
    """kind (video | document | audio | portrait | photo) -> its distinct files, made if
    missing."""
    folder = cache / ("mix-small" if sizes.small else "mix")
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"document": "pdf", "audio": "wav", "portrait": "mp4", "photo": "png"}
    tag = {"document": sizes.pages, "audio": sizes.audio_minutes, "portrait": sizes.portrait_s,
           "photo": "x".join(map(str, sizes.photo))}  # fmt: skip
    files = {
        k: [str(folder / f"{k}_{tag[k]}_{s}.{e}") for s in range(distinct)] for k, e in ext.items()
    }
    todo = [(k, p, s) for k, ps in files.items() for s, p in enumerate(ps) if not os.path.exists(p)]
    with ProcessPoolExecutor(max(1, min(len(todo), os.cpu_count() or 1)),
                             mp_context=mp.get_context("spawn")) as ex:  # fmt: skip
        jobs = [ex.submit(_make, k, p, s, sizes) for k, p, s in todo]
        clips = workload_files("video", cache, sizes.small)  # W-video's own pool, meanwhile
        for j in jobs:
            j.result()
    files["video"] = []
    for s in range(distinct):
        path = folder / f"video_{sizes.video_minutes}m_{s}.mp4"
        if not path.exists():  # clip order rotated per file: distinct, yet each the same length
            per_file = sizes.video_minutes * 60 // (4 if sizes.small else 60)
            order = [clips[(s + k) % len(clips)] for k in range(per_file)]
            concat_stream_copy(order, str(path))
        files["video"].append(str(path))
    return files
