"""Media decode + sampling throughput on W-video (docs/performance.md), beside the ffmpeg CLI.

    python -m benchmarks.media [--clips 2] [--cache DIR]

Generates 1-minute 1280×720 30 fps H.264 + AAC 48 kHz stereo clips (GOP 2 s, static
background, moving objects, a speech-like soundtrack) once into a cache directory, then
times fps 1 / max_frames 512 sampling with audio on:
  * per core: our pipeline in this process (1 torch thread, 1 decoder thread), once per
    decoding choice, and `ffmpeg -threads 1` doing the same sampling to raw RGB frames plus
    16 kHz mono float audio;
  * whole host: a MediaPool of nproc workers (frame buffers handed back as each result
    lands, and not), and nproc ffmpeg processes side by side.
Reports sampled frames/s and video-hours per hour (video seconds per wall second).

The pipeline's video items are the frames as decoded (uint8 RGB): the resize to the patch
grid and the CLIP normalisation happen on the GPU in the vision encoder
(`media.resize.video_pixels`), so they are not in these CPU numbers; the per-clip
breakdown still times them on one CPU core, to show what moving them saved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch

from media.audio import audio_item, decode_audio
from media.items import frame_buffers
from media.limits import DEFAULT_LIMITS
from media.options import MediaOptions
from media.pipeline import process
from media.pool import MediaPool, run_all
from media.resize import resize_normalize, video_grid, video_pixels
from media.video import video_stream
from media.video_decode import DecodeConfig, configure, decode_frames

W, H, FPS, SECONDS, AUDIO_RATE = 1280, 720, 30, 60, 48000
OPTS = MediaOptions(fps=1.0, max_frames=512, use_audio=True)
POOL_ROUNDS = 6


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """float32 [2, n]: a gliding voiced pitch with harmonics, gated at syllable rate."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / AUDIO_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    gate = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    mono = 0.2 * voice * gate + 0.005 * rng.standard_normal(t.shape)
    return np.stack([mono, 0.9 * mono]).astype(np.float32)


def make_clip(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    background = np.stack([x * 200 // W, y * 200 // H, (x // 40 + y // 40) % 2 * 60 + 40], -1)
    background = np.clip(background + rng.integers(0, 24, (H, W, 3)), 0, 255).astype(np.uint8)
    objects = [
        (rng.integers(40, 160, 2), rng.uniform(-9, 9, 2), rng.integers(0, 256, 3)) for _ in range(5)
    ]
    with av.open(path, "w") as out:
        x264 = {"preset": "fast", "crf": "23", "x264-params": "keyint=60:min-keyint=60:scenecut=0"}
        vs = out.add_stream("libx264", rate=FPS, options=x264)  # GOP 2 s
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        for i in range(SECONDS * FPS):
            frame = background.copy()
            for n, ((h, w), v, color) in enumerate(objects):
                cy = int(H / 2 + (H / 2 - h) * np.sin(i * v[0] / 100 + n))
                cx = int(W / 2 + (W / 2 - w) * np.sin(i * v[1] / 100 + 2 * n))
                frame[max(0, cy - h // 2) : cy + h // 2, max(0, cx - w // 2) : cx + w // 2] = color
            for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        audio = _speech_like(SECONDS, seed)
        for pos in range(0, audio.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, pos : pos + 1024]), format="fltp", layout="stereo"
            )
            af.sample_rate, af.pts, af.time_base = AUDIO_RATE, pos, Fraction(1, AUDIO_RATE)
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode(None):
            out.mux(p)


def clips(cache: str, n: int) -> list[str]:
    os.makedirs(cache, exist_ok=True)
    paths = []
    for seed in range(n):
        path = os.path.join(cache, f"w_video_{seed}.mp4")
        if not os.path.exists(path):
            print(f"generating {path} (once)", flush=True)
            make_clip(path + ".tmp.mp4", seed)
            os.replace(path + ".tmp.mp4", path)
        paths.append(path)
    return paths


@dataclass
class Row:
    name: str
    workers: int
    videos: int
    frames: int
    seconds: float

    def line(self) -> str:
        vh = self.videos * SECONDS / self.seconds
        return (
            f"| {self.name} | {self.workers} | {self.frames / self.seconds:.1f} | {vh:.1f} | "
            f"{vh / self.workers:.1f} |"
        )


def ours_serial(paths: list[str], name: str, cfg: DecodeConfig) -> Row:
    process(paths[0], OPTS, cfg=cfg)  # warm-up: imports, codec init, page cache
    frames, t = 0, time.perf_counter()
    for path in paths:
        items = process(path, OPTS, cfg=cfg)
        frames += sum(len(it.timestamps) for it in items)
    return Row(name, cfg.threads, len(paths), frames, time.perf_counter() - t)


def stages(path: str) -> str:
    """Where one clip's time goes in our pipeline (default decoding choices)."""
    with av.open(path) as c:
        stream = video_stream(c)
        configure(stream, DecodeConfig())
        t = time.perf_counter()
        rgb = list(
            decode_frames(c, stream, [float(i) for i in range(SECONDS)], FPS, DecodeConfig())
        )
        t_dec = time.perf_counter() - t
    t = time.perf_counter()
    grid = video_grid(H, W)
    for frame in rgb:  # what the GPU now does, on this core
        video_pixels(frame.permute(2, 0, 1)[None, None], grid)
    t_resize = time.perf_counter() - t
    # The option we measure but do not take: scaling in the decoder (swscale bicubic) is
    # faster but is not the reference's antialiased resize.
    with av.open(path) as c:
        frames = [f for _, f in zip(range(SECONDS), c.decode(video=0), strict=False)]
    t = time.perf_counter()
    size = {"width": grid[1] * 16, "height": grid[0] * 16, "interpolation": "BICUBIC"}
    for f in frames:
        scaled = f.reformat(format="rgb24", **size).to_ndarray()
    t_sws = time.perf_counter() - t
    exact = resize_normalize(torch.from_numpy(frames[-1].to_ndarray(format="rgb24"))[None], grid)
    approx = resize_normalize(torch.from_numpy(scaled)[None], grid)
    sws_err = float((exact - approx).abs().mean())
    t = time.perf_counter()
    wave, _ = decode_audio(path, "mov", DEFAULT_LIMITS)
    t_audio = time.perf_counter() - t
    t = time.perf_counter()
    audio_item(wave)
    t_mel = time.perf_counter() - t
    return (
        f"per clip: video decode + RGB {t_dec:.2f} s, audio decode+resample {t_audio:.2f} s, "
        f"mel {t_mel:.2f} s; on the GPU now, not in the rows above: resize+normalise "
        f"({t_resize:.2f} s on this core); not taken: swscale "
        f"bicubic in the decoder {t_sws:.2f} s (mean |diff| {sws_err:.3f} after normalising)"
    )


def ours_pool(paths: list[str], workers: int, recycle: bool = True) -> Row:
    with MediaPool(workers) as pool:
        run_all(pool, [(paths[i % len(paths)], OPTS) for i in range(workers)])  # warm them all
        # Enough rounds that the pool's start and its last, partly idle round weigh little:
        # a service's pool runs a long queue.
        # Each result is dropped as it lands, as the GPU worker frees what it has encoded, and
        # its frame buffers go back to their worker (the service's MediaPool.recycle).
        n = POOL_ROUNDS * workers
        t = time.perf_counter()
        pending = {pool.submit(paths[i % len(paths)], OPTS) for i in range(n)}
        frames = 0
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                items = f.result()
                frames += sum(len(it.timestamps) for it in items)
                if recycle:
                    pool.recycle(frame_buffers(items))
        wall = time.perf_counter() - t
    name = f"ours, MediaPool({workers}), frame buffers {'' if recycle else 'not '}recycled"
    return Row(name, workers, n, frames, wall)


def ffmpeg_cmd(path: str) -> list[str]:
    """Same sampling to raw frames: 1 fps RGB at full size + 16 kHz mono float audio."""
    return [
        "ffmpeg", "-v", "error", "-threads", "1", "-i", path,
        "-map", "0:v", "-vf", "fps=1", "-pix_fmt", "rgb24", "-f", "rawvideo", "-y", "/dev/null",
        "-map", "0:a", "-ac", "1", "-ar", "16000", "-f", "f32le", "-y", "/dev/null",
    ]  # fmt: skip


def ffmpeg_rows(paths: list[str], workers: int) -> list[Row]:
    subprocess.run(ffmpeg_cmd(paths[0]), check=True)
    t = time.perf_counter()
    for path in paths:
        subprocess.run(ffmpeg_cmd(path), check=True)
    serial = Row(
        "ffmpeg CLI -threads 1", 1, len(paths), len(paths) * SECONDS, time.perf_counter() - t
    )
    jobs = [paths[i % len(paths)] for i in range(3 * workers)]
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda p: subprocess.run(ffmpeg_cmd(p), check=True), jobs))
    host = Row(
        f"ffmpeg CLI × {workers}", workers, len(jobs), len(jobs) * SECONDS, time.perf_counter() - t
    )
    return [serial, host]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument(
        "--cache", default=os.path.join(os.path.dirname(__file__), "..", ".cache", "media_bench")
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = clips(args.cache, args.clips)
    nproc = os.cpu_count() or 1
    rows = [
        ours_serial(paths, "ours: GOP tails + unsampled non-ref frames skipped", DecodeConfig()),
        ours_serial(paths, "ours, non-ref frames decoded", DecodeConfig(skip_nonref=False)),
        ours_serial(
            paths, "ours, every frame decoded", DecodeConfig(skip_gops=False, skip_nonref=False)
        ),
        ours_serial(paths, "ours, 2 decoder threads", DecodeConfig(threads=2)),
        ours_pool(paths, nproc, recycle=False),
        ours_pool(paths, nproc),
    ]
    if shutil.which("ffmpeg"):
        rows += ffmpeg_rows(paths, nproc)
    breakdown = stages(paths[0])
    print(f"\nW-video, fps 1 / max_frames 512, audio on; host: {nproc} cores")
    print("| pipeline | cores | sampled frames/s | video-h/h | video-h/h per core |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(r.line())
    if not shutil.which("ffmpeg"):
        print("ffmpeg CLI baseline absent: no `ffmpeg` binary on this host")
    print(breakdown)


if __name__ == "__main__":
    main()
