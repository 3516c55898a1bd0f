"""Write tests/media/golden/*.npz from transformers 5.24 nemotron_h_omni's reference processors.

The reference image/video processors import torchvision, which does not import beside the
project's CPU torch, so this runs in a separate venv (docs/model.md §9.2):

    python3 -m venv .golden-venv
    .golden-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        transformers==5.24.0 av pillow numpy
    .golden-venv/bin/python scripts/make_media_goldens.py

Each golden keeps its input (image array or encoded video bytes) and a compact but complete
fingerprint of the reference output: the grid, every patch's mean, and 4096 elements at
seeded positions, so the files stay small while any resize/normalise/layout error shows.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402
from transformers.models.nemotron_h_omni.image_processing_nemotron_h_omni import (  # noqa: E402
    NemotronH_Omni_Reasoning_V3ImageProcessor,
)
from transformers.models.nemotron_h_omni.video_processing_nemotron_h_omni import (  # noqa: E402
    NemotronH_Omni_Reasoning_V3VideoProcessor,
)
from transformers.video_utils import read_video_pyav  # noqa: E402

from tests.media.corpus import write_video  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "media", "golden")
N_SAMPLES = 4096
# (height, width, patch budget): odd sizes, both aspects, an exact multiple, the upscale
# branch, the downscale branch (budget below the image's own grid) and budget == minimum.
IMAGES = [
    (37, 53, 13312),
    (120, 200, 13312),
    (517, 33, 13312),
    (48, 64, 13312),
    (500, 700, 1200),
    (300, 410, 1024),
]
# (width, height, frames, source fps, sampling fps)
VIDEOS = [(96, 40, 7, 10, 5), (40, 72, 9, 10, 10), (64, 48, 5, 25, 25), (80, 48, 15, 30, 4)]


def sample(t: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    flat = t.reshape(-1)
    idx = np.random.default_rng(seed).choice(
        flat.numel(), size=min(N_SAMPLES, flat.numel()), replace=False
    )
    return idx.astype(np.int64), flat[torch.from_numpy(idx)].numpy()


def make_image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus a few sharp random blocks (exercise the antialias taps)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / max(1, w - 1), y * 255 / max(1, h - 1), (x + y) % 256], -1)
    for _ in range(6):
        by, bx = rng.integers(0, h), rng.integers(0, w)
        img[by : by + rng.integers(2, 20), bx : bx + rng.integers(2, 20)] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def image_goldens() -> None:
    proc = NemotronH_Omni_Reasoning_V3ImageProcessor()
    for n, (h, w, budget) in enumerate(IMAGES):
        img = make_image(h, w, seed=n)
        out = proc(
            images=[torch.from_numpy(img).permute(2, 0, 1)],
            max_num_patches=budget,
            return_tensors="pt",
        )
        grid = out["image_grid_hw"][0].tolist()
        patches = out["pixel_values"]  # [ph·pw, 3·16·16], row-major patches, (c, y, x) inside
        idx, val = sample(patches, seed=100 + n)
        np.savez_compressed(
            os.path.join(OUT, f"image_{n}.npz"),
            image=img,
            budget=budget,
            grid=np.array(grid),
            patch_mean=patches.mean(1).numpy(),
            idx=idx,
            val=val,
        )


def video_goldens() -> None:
    proc = NemotronH_Omni_Reasoning_V3VideoProcessor(
        norm_mean=list(OPENAI_CLIP_MEAN), norm_std=list(OPENAI_CLIP_STD)
    )
    for n, (w, h, frames, fps, sfps) in enumerate(VIDEOS):
        with tempfile.TemporaryDirectory() as d:
            path = write_video(
                os.path.join(d, "v.mp4"), width=w, height=h, frames=frames, fps=fps, gop=4
            )
            with open(path, "rb") as f:
                data = np.frombuffer(f.read(), dtype=np.uint8)
            video, meta = read_video_pyav(
                path, sample_indices_fn=lambda metadata, **kw: np.arange(metadata.total_num_frames)
            )
        out = proc(
            videos=[video],
            video_metadata=[meta],
            do_sample_frames=True,
            fps=sfps,
            return_metadata=True,
        )
        tub = out["pixel_values_videos"][0]  # [n_tubelets, 2·3, H, W]
        nt, _, hh, ww = tub.shape
        ph, pw = hh // 16, ww // 16
        means = tub.reshape(nt, 2, 3, ph, 16, pw, 16).mean(dim=(2, 4, 6))  # [n_tubelets, 2, ph, pw]
        m = out["video_metadata"][0]
        stamps = [int(i) * int(1000.0 / m.fps) / 1000.0 for i in m.frames_indices]
        idx, val = sample(tub, seed=200 + n)
        np.savez_compressed(
            os.path.join(OUT, f"video_{n}.npz"),
            video=data,
            fps=sfps,
            grid=np.array([ph, pw]),
            num_frames=out["num_frames"][0],
            indices=np.asarray(m.frames_indices),
            timestamps=np.array(stamps),
            patch_mean=means.numpy(),
            idx=idx,
            val=val,
        )


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    image_goldens()
    video_goldens()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} goldens, {total / 1e6:.2f} MB")
