"""Video decode on a generated corpus: codecs, containers, rotation, VFR, offsets, chunks."""

from __future__ import annotations

import pytest
import torch

from media.limits import MediaLimits
from media.options import MediaOptions
from media.pipeline import process
from media.probe import open_container
from media.resize import resize_normalize, video_pixels
from media.video import plan_chunks, probe_video
from media.video_decode import DecodeConfig
from tests.media.corpus import frame_pattern, write_video

LIMITS = MediaLimits()


def frames_of(item) -> torch.Tensor:
    """[F, 3, H, W] sampled frames as the model sees them (the repeated tail frame dropped)."""
    return video_pixels(item.tubelets, item.grid).flatten(0, 1)[: len(item.timestamps)]


def identify(item, width, height, candidates: int, rotation_k: int = 0) -> list[int]:
    """Index of the generated pattern frame closest to each sampled frame."""
    pats = torch.stack(
        [torch.from_numpy(frame_pattern(i, width, height)) for i in range(candidates)]
    )
    pats = torch.rot90(pats, k=rotation_k, dims=(1, 2))
    ref = resize_normalize(pats, item.grid)  # [candidates, 3, H, W]
    got = frames_of(item)
    err = (got[:, None] - ref[None]).abs().mean(dim=(2, 3, 4))
    return err.argmin(dim=1).tolist()


CODECS = [
    ("mp4", "libx264", "yuv420p", 64, 48),
    ("mov", "libx264", "yuv444p", 63, 47),  # odd size
    ("mkv", "libx265", "yuv420p", 64, 48),
    ("mkv", "libx265", "yuv420p10le", 64, 48),  # H.265 10-bit
    ("mp4", "libx264", "yuv420p10le", 64, 48),
    ("webm", "libvpx-vp9", "yuv420p", 64, 48),
    ("mkv", "libsvtav1", "yuv420p", 64, 48),
    ("avi", "mpeg4", "yuv420p", 64, 48),
    ("mp4", "mpeg4", "yuv420p", 62, 34),
]


@pytest.mark.parametrize("ext,codec,pix_fmt,w,h", CODECS)
def test_codec_container_decodes_every_frame(tmp_path, ext, codec, pix_fmt, w, h):
    path = write_video(
        str(tmp_path / f"v.{ext}"),
        codec=codec,
        pix_fmt=pix_fmt,
        width=w,
        height=h,
        frames=7,
        fps=10,
    )
    (item,) = process(path, MediaOptions(fps=10, use_audio=False))
    assert item.timestamps == pytest.approx([i / 10 for i in range(7)])
    assert item.tubelets.dtype == torch.uint8 and item.tubelets.shape == (
        4,
        2,
        3,
        h,
        w,
    )  # as decoded
    assert torch.equal(item.tubelets[3, 0], item.tubelets[3, 1])  # odd count: last frame repeated
    assert identify(item, w, h, 7) == list(range(7))


@pytest.mark.parametrize(
    "ext,codec", [("mp4", "libx264"), ("mkv", "libx265"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")]
)
def test_sparse_sampling_skips_gops_and_is_frame_exact(tmp_path, ext, codec):
    path = write_video(str(tmp_path / f"v.{ext}"), codec=codec, frames=40, fps=10, gop=4)
    opts = MediaOptions(fps=1, use_audio=False)
    (fast,) = process(path, opts, LIMITS, DecodeConfig(skip_gops=True))
    (full,) = process(path, opts, LIMITS, DecodeConfig(skip_gops=False, skip_nonref=False))
    assert fast.timestamps == [0.0, 1.0, 2.0, 3.0]
    assert torch.equal(fast.tubelets, full.tubelets)
    assert identify(fast, 64, 48, 40) == [0, 10, 20, 30]


def test_threaded_decoder_gives_the_same_frames(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), frames=20, fps=10, gop=6)
    opts = MediaOptions(fps=3, use_audio=False)
    (one,) = process(path, opts, LIMITS, DecodeConfig(threads=1))
    (two,) = process(path, opts, LIMITS, DecodeConfig(threads=2))
    assert torch.equal(one.tubelets, two.tubelets)


@pytest.mark.parametrize("rotation,k", [(90, 1), (-90, 3), (180, 2)])
def test_rotation_metadata_is_applied(tmp_path, rotation, k):
    path = write_video(str(tmp_path / "r.mp4"), rotation=rotation, frames=3, fps=10)
    (item,) = process(path, MediaOptions(fps=10, use_audio=False))
    ph, pw = item.grid
    assert (ph > pw) == (rotation % 180 != 0)
    assert item.tubelets.shape[-2:] == ((64, 48) if rotation % 180 else (48, 64))  # upright
    assert identify(item, 64, 48, 3, rotation_k=k) == [0, 1, 2]


def test_vfr_samples_by_presentation_time(tmp_path):
    # 10 fps nominal clock (pts in ms); frames shown at irregular times
    pts = [0, 100, 150, 400, 450, 500, 900, 950]
    path = write_video(str(tmp_path / "vfr.mkv"), frames=len(pts), fps=10, pts=pts)
    with open_container(path, "matroska", LIMITS) as c:
        info = probe_video(c, LIMITS)
    (item,) = process(path, MediaOptions(fps=info.fps, use_audio=False))
    slack = 0.5 / info.fps

    def on_screen(t: float) -> int:
        """The frame within half a frame of t, else (a gap) the last one before t."""
        j = next((j for j, p in enumerate(pts) if p / 1000 >= t - slack), len(pts))
        return j if j < len(pts) and pts[j] / 1000 <= t + slack else j - 1

    step = int(1000 / info.fps) / 1000  # labels are index · int(1000/fps) ms: recover the index
    shown = [on_screen(round(ts / step) / info.fps) for ts in item.timestamps]
    assert identify(item, 64, 48, len(pts)) == shown


def test_nonzero_start_time(tmp_path):
    pts = [2000 + 100 * i for i in range(6)]  # stream starts at 2 s
    path = write_video(str(tmp_path / "late.mp4"), frames=6, fps=10, pts=pts)
    (item,) = process(path, MediaOptions(fps=10, use_audio=False))
    assert item.timestamps == pytest.approx([i / 10 for i in range(6)])
    assert identify(item, 64, 48, 6) == list(range(6))


def test_chunks_and_time_range(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), frames=9, fps=10, audio=[("aac", 16000, 1)])
    items = process(path, MediaOptions(fps=10, max_frames=4))
    assert [it.timestamps for it in items] == [[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7], [0.8]]
    assert [identify(it, 64, 48, 9) for it in items] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    spans = [x for it in items for x in (it.start_s, it.end_s)]
    assert spans == pytest.approx([0, 0.4, 0.4, 0.8, 0.8, 0.9])
    assert sum(it.audio.num_samples for it in items) == pytest.approx(14400, abs=16)
    (part,) = process(path, MediaOptions(fps=10, start_s=0.3, end_s=0.6, use_audio=False))
    assert part.timestamps == [0.3, 0.4, 0.5]
    assert identify(part, 64, 48, 9) == [3, 4, 5]


def test_plan_respects_max_frames_and_fps(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), frames=30, fps=10)
    with open_container(path, "mov", LIMITS) as c:
        info = probe_video(c, LIMITS)
    assert (info.frames, info.fps, info.duration) == (30, 10.0, 3.0)
    plan = plan_chunks(info, MediaOptions(fps=2, max_frames=512))
    assert plan == [(0.0, 3.0, [0, 5, 10, 15, 20, 25])]
    plan = plan_chunks(info, MediaOptions(fps=2, max_frames=4, chunk_s=2.0))
    assert [p[2] for p in plan] == [[0, 5, 10, 15], [20, 25]]


def test_one_frame_video(tmp_path):
    path = write_video(str(tmp_path / "one.mp4"), frames=1, fps=25)
    (item,) = process(path, MediaOptions(use_audio=False))
    assert item.timestamps == [0.0] and item.num_tubelets == 1
    assert torch.equal(item.tubelets[0, 0], item.tubelets[0, 1])


def test_soundtracks(tmp_path):
    two = write_video(
        str(tmp_path / "two.mkv"),
        frames=10,
        fps=10,
        audio=[("aac", 44100, 2), ("libopus", 48000, 1)],
    )
    (item,) = process(two, MediaOptions(fps=10))
    assert item.audio is not None and item.audio.num_samples == pytest.approx(16000, abs=400)
    silent = write_video(str(tmp_path / "mute.mp4"), frames=10, fps=10)
    (item,) = process(silent, MediaOptions(fps=10))
    assert item.audio is None
    (audio,) = process(two, MediaOptions(media_type="audio"))
    assert audio.num_samples == pytest.approx(16000, abs=400) and audio.clips[0].shape[1] == 128
