"""Parity with the reference processors: images and videos against goldens written by
scripts/make_media_goldens.py, mel features live against transformers' Parakeet extractor."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from media.audio import decode_audio, process_audio
from media.image import process_image
from media.limits import MediaLimits
from media.mel import log_mel
from media.options import MediaOptions
from media.resize import video_pixels
from media.video import process_video
from tests.media.corpus import tone

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
LIMITS = MediaLimits()
TOL = 1e-4


def _check(ours_patch_mean, ours_flat, g) -> None:
    assert np.abs(ours_patch_mean - g["patch_mean"]).max() <= TOL
    assert np.abs(ours_flat[g["idx"]] - g["val"]).max() <= TOL


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GOLDEN, "image_*.npz"))))
def test_image_matches_reference(path, tmp_path):
    g = np.load(path)
    png = str(tmp_path / "in.png")
    Image.fromarray(g["image"]).save(png)
    item = process_image(png, LIMITS, budget=int(g["budget"]))
    assert item.grid == tuple(g["grid"])
    ph, pw = item.grid
    # [3, 16ph, 16pw] -> [ph·pw, 3·16·16] in the reference's patch layout
    patches = item.pixels.reshape(3, ph, 16, pw, 16).permute(1, 3, 0, 2, 4).reshape(ph * pw, -1)
    _check(patches.mean(1).numpy(), patches.reshape(-1).numpy(), g)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GOLDEN, "video_*.npz"))))
def test_video_matches_reference(path, tmp_path):
    g = np.load(path)
    mp4 = tmp_path / "in.mp4"
    mp4.write_bytes(g["video"].tobytes())
    (item,) = process_video(
        str(mp4), "mov", MediaOptions(fps=float(g["fps"]), max_frames=1024, use_audio=False), LIMITS
    )
    assert item.grid == tuple(g["grid"])
    assert len(item.timestamps) == int(g["num_frames"])
    assert item.timestamps == pytest.approx(list(g["timestamps"]), abs=1e-9)
    pixels = video_pixels(item.tubelets, item.grid)  # what the model computes on the GPU
    nt = pixels.shape[0]
    ph, pw = item.grid
    means = pixels.reshape(nt, 2, 3, ph, 16, pw, 16).mean(dim=(2, 4, 6))
    _check(means.numpy(), pixels.reshape(-1).numpy(), g)


@pytest.fixture(scope="module")
def reference_extractor():
    from transformers import ParakeetFeatureExtractor

    return ParakeetFeatureExtractor(feature_size=128)


def _reference_mel(fe, wave: torch.Tensor) -> torch.Tensor:
    feats = fe(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_features[0]
    valid = wave.shape[0] // 160
    assert feats[valid:].abs().max() == 0  # the reference's padded frame is zeroed: we drop it
    return feats[:valid]


@pytest.mark.parametrize(
    "rate,channels,seconds", [(16000, 1, 2.3), (44100, 2, 1.7), (8000, 1, 31.2), (48000, 2, 30.5)]
)
def test_mel_matches_reference(reference_extractor, tmp_path, rate, channels, seconds):
    from tests.media.corpus import write_audio

    path = write_audio(
        str(tmp_path / "a.wav"),
        container="wav",
        codec="pcm_s16le",
        rate=rate,
        channels=channels,
        seconds=seconds,
    )
    wave, _ = decode_audio(path, "wav", LIMITS)
    assert abs(wave.shape[0] - round(seconds * 16000)) <= 32
    item = process_audio(path, "wav", LIMITS)
    clips = torch.split(wave, 30 * 16000)
    assert len(item.clips) == len(clips)
    for ours, clip in zip(item.clips, clips, strict=True):
        ref = _reference_mel(reference_extractor, clip)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() <= TOL


def test_mel_of_silence_is_finite(reference_extractor):
    wave = torch.zeros(16000)
    ours = log_mel(wave)
    assert torch.isfinite(ours).all()
    assert (ours - _reference_mel(reference_extractor, wave)).abs().max() <= TOL


def test_stereo_downmix_is_channel_mean(tmp_path):
    from tests.media.corpus import write_audio

    path = write_audio(
        str(tmp_path / "s.wav"),
        container="wav",
        codec="pcm_f32le",
        rate=16000,
        channels=2,
        seconds=0.5,
    )
    wave, _ = decode_audio(path, "wav", LIMITS)
    expected = torch.from_numpy(tone(0.5, 16000, 2).mean(0))
    assert (wave - expected).abs().max() < 1e-5
