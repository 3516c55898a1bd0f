"""Pipeline.run end to end on CPU with the demo checkpoint: real files of every media type."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from service.schemas import JobCreate
from tests.media.corpus import write_video
from workers.media.errors import MediaError
from workers.media.items import AudioItem
from workers.media_units import audio_units
from workers.pipeline import DEMO_WARNING, Pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return Pipeline.load(None, "cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(d / "a.png")
    t = np.arange(48000) / 16000
    sf.write(d / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    write_video(str(d / "a.mp4"), frames=16, fps=4, width=96, height=64, audio=[("aac", 16000, 1)])
    pages = [Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8)) for _ in range(2)]
    pages[0].save(d / "a.pdf", save_all=True, append_images=pages[1:])
    return d


def request(**kw) -> JobCreate:
    return JobCreate.model_validate({"generation": {"max_tokens": 6, "temperature": 0}} | kw)


class Stages:
    def __init__(self):
        self.seen: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.seen.append((stage, done, total))


def test_demo_model_is_marked(pipeline):
    assert pipeline.model_info.name == "demo-random"
    assert pipeline.model_info.precision == "fp32"  # the CPU runs the demo's weights in fp32


def test_image(pipeline, files):
    stages = Stages()
    out = pipeline.run(request(task="caption"), files / "a.png", stages, lambda: False)
    assert out.warning == DEMO_WARNING and out.segments is None and out.reasoning is None
    assert out.usage["images"] == 1
    assert out.usage["input_tokens"] >= 256  # at least 1024 patches / 4 image tokens
    assert 0 <= out.usage["output_tokens"] <= 6
    assert [s for s, _, _ in stages.seen][0] == "decoding" and ("generating", 1, 1) in stages.seen


def test_audio(pipeline, files):
    out = pipeline.run(request(task="transcribe"), files / "a.wav", Stages(), lambda: False)
    assert out.usage["audio_seconds"] == pytest.approx(3.0)
    assert out.usage["input_tokens"] >= 38  # 12.5 audio tokens per second
    assert out.usage["video_tokens_before_evs"] == 0


def test_video_with_audio_in_chunks(pipeline, files):
    req = request(task="summarize", video={"fps": 2, "max_frames": 4, "evs_rate": 0.5})
    out = pipeline.run(req, files / "a.mp4", Stages(), lambda: False)
    assert [(s["start_s"], s["end_s"]) for s in out.segments] == [(0.0, 2.0), (2.0, 4.0)]
    u = out.usage
    assert u["video_seconds"] == pytest.approx(4.0) and u["frames_sampled"] == 8
    assert u["audio_seconds"] == pytest.approx(4.0, abs=0.1)
    assert 0 < u["video_tokens_after_evs"] < u["video_tokens_before_evs"]
    # the summarize pass is a third model call on top of the two chunks
    assert u["input_tokens"] > u["video_tokens_after_evs"] + 2 * 50


def test_document_pages_are_segments(pipeline, files):
    out = pipeline.run(request(task="extract"), files / "a.pdf", Stages(), lambda: False)
    assert [s["page"] for s in out.segments] == [1, 2]
    assert out.usage["pages"] == 2
    assert out.text == "\n\n".join(s["text"] for s in out.segments)


def test_thinking_output_has_reasoning(pipeline, files):
    req = request(task="caption", generation={"max_tokens": 4, "temperature": 0, "thinking": True})
    out = pipeline.run(req, files / "a.png", Stages(), lambda: False)
    # the prompt opens <think>: whatever came before </think> (or all of it) is reasoning
    assert out.reasoning is not None


def test_cancel_before_generation_returns_nothing_generated(pipeline, files):
    req = request(task="caption", video={"fps": 2, "max_frames": 4})
    out = pipeline.run(req, files / "a.mp4", Stages(), lambda: True)
    assert out.usage["output_tokens"] == 0 and out.text == ""


def test_long_audio_is_cut_at_clip_boundaries():
    samples = [480000] * 11 + [8000]
    clips = [torch.zeros(n // 160 + 1, 128) for n in samples]
    audio = AudioItem(clips, sum(samples), samples)
    units = audio_units(audio)
    assert [(u.start_s, u.end_s) for u in units] == [(0.0, 300.0), (300.0, 330.5)]
    parts = [u.items[0] for u in units]
    assert sum(p.num_tokens for p in parts) == audio.num_tokens
    assert parts[1].clips[0] is clips[10]


def test_cancel_during_decode_keeps_only_finished_segments(pipeline, files):
    polls = iter([False] * 3)
    req = request(task="summarize", video={"fps": 2, "max_frames": 4})
    out = pipeline.run(req, files / "a.mp4", Stages(), lambda: next(polls, True))
    # the chunks were mid-generation when the cancel came: what was cut is not in the result
    assert len(out.segments) < 2
    assert out.usage["output_tokens"] > 0 and out.usage["input_tokens"] > 0


def test_jobs_leave_the_media_budget_as_they_found_it(pipeline, files):
    """Decoded media counts against the shared-memory budget until the engine has it: after
    jobs that finished, failed to decode or were cancelled, nothing is held or in flight."""
    budget = pipeline.media_budget
    pipeline.run(request(task="caption"), files / "a.png", Stages(), lambda: False)
    pipeline.run(request(task="caption"), files / "a.mp4", Stages(), lambda: True)
    bad = files / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(MediaError):
        pipeline.run(request(task="caption"), bad, Stages(), lambda: False)
    assert budget.held == 0 and budget.in_flight == 0 and budget.peak > 0


def test_video_frame_buffers_go_back_to_the_pool(pipeline, files):
    """Once the engine has encoded a chunk, or a cancel left it unsubmitted, its frame buffer
    goes back to the pool worker that decoded it (one chunk per run here)."""
    pool = pipeline.media
    before = pool.handed_back
    pipeline.run(request(task="caption"), files / "a.mp4", Stages(), lambda: False)
    pipeline.run(request(task="caption"), files / "a.mp4", Stages(), lambda: True)
    deadline = time.monotonic() + 10
    while pool.handed_back < before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the pool's dispatcher thread sends them
    assert pool.handed_back == before + 2
