"""Pipeline.submit end to end on CPU with the demo checkpoint: real files of every media type."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from contract.schemas import JobCreate
from media.errors import MediaError, MediaTooLong
from media.items import AudioItem
from tests.media.corpus import write_video
from workers.engine.engine import EngineConfig
from workers.engine.memory_plan import min_piece_bytes
from workers.engine.recovery import ResourcesExhausted
from workers.job import Job, JobThreads
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


class CancelAt:
    """A progress callback that cancels its job when the job reports `at`."""

    def __init__(self, at: tuple[str, int, int]):
        self.at, self.job, self._bound = at, None, threading.Event()

    def bind(self, job: Job) -> Job:
        self.job = job
        self._bound.set()
        return job

    def __call__(self, stage: str, done: int, total: int) -> None:
        if (stage, done, total) == self.at:
            self._bound.wait()
            self.job.cancel()


def run(pipeline, req, path, progress=None):
    return pipeline.submit(req, path, progress).result(timeout=120)


def run_cancelled(pipeline, req, path, at):
    cancel = CancelAt(at)
    return cancel.bind(pipeline.submit(req, path, cancel)).result(timeout=120)


def test_demo_model_is_marked(pipeline):
    assert pipeline.model_info.name == "demo-random"
    assert pipeline.model_info.precision == "fp32"  # the CPU runs the demo's weights in fp32


def test_decoders_keep_the_priority_of_a_cpu_engine(pipeline):
    """Beside a CPU engine (the model computed on its thread) the decode processes are not
    lowered; DECODER_NICENESS is for a GPU engine's launching thread."""
    assert pipeline.model.device.type == "cpu" and pipeline.media.niceness == 0


def test_image(pipeline, files):
    stages = Stages()
    out = run(pipeline, request(task="caption"), files / "a.png", stages)
    assert out.warning == DEMO_WARNING and out.segments is None and out.reasoning is None
    assert out.usage["images"] == 1
    assert out.usage["input_tokens"] >= 256  # at least 1024 patches / 4 image tokens
    assert 0 <= out.usage["output_tokens"] <= 6
    assert [s for s, _, _ in stages.seen][0] == "decoding" and ("generating", 1, 1) in stages.seen


def test_audio(pipeline, files):
    out = run(pipeline, request(task="transcribe"), files / "a.wav")
    assert out.usage["audio_seconds"] == pytest.approx(3.0)
    assert out.usage["input_tokens"] >= 38  # 12.5 audio tokens per second
    assert out.usage["video_tokens_before_evs"] == 0


def test_video_with_audio_in_chunks(pipeline, files):
    req = request(task="summarize", video={"fps": 2, "max_frames": 4, "evs_rate": 0.5})
    out = run(pipeline, req, files / "a.mp4")
    assert [(s["start_s"], s["end_s"]) for s in out.segments] == [(0.0, 2.0), (2.0, 4.0)]
    u = out.usage
    assert u["video_seconds"] == pytest.approx(4.0) and u["frames_sampled"] == 8
    assert u["audio_seconds"] == pytest.approx(4.0, abs=0.1)
    assert 0 < u["video_tokens_after_evs"] < u["video_tokens_before_evs"]
    # the summarize pass is a third model call on top of the two chunks
    assert u["input_tokens"] > u["video_tokens_after_evs"] + 2 * 50


def test_document_pages_are_segments(pipeline, files):
    out = run(pipeline, request(task="extract"), files / "a.pdf")
    assert [s["page"] for s in out.segments] == [1, 2]
    assert out.usage["pages"] == 2
    assert out.text == "\n\n".join(s["text"] for s in out.segments)


def test_thinking_output_has_reasoning(pipeline, files):
    req = request(task="caption", generation={"max_tokens": 4, "temperature": 0, "thinking": True})
    out = run(pipeline, req, files / "a.png")
    # the prompt opens <think>: whatever came before </think> (or all of it) is reasoning
    assert out.reasoning is not None


def test_cancel_before_generation_returns_nothing_generated(pipeline, files):
    req = request(task="caption", video={"fps": 2, "max_frames": 4})
    out = run_cancelled(pipeline, req, files / "a.mp4", ("decoding", 0, 1))
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


def test_cancel_keeps_only_finished_segments(pipeline, files):
    req = request(task="summarize", video={"fps": 2, "max_frames": 4})
    # cancelled once both chunks are with the engine: the second was just handed over
    out = run_cancelled(pipeline, req, files / "a.mp4", ("decoding", 1, 1))
    # what the cancel cut is not in the result, and no summary pass ran
    assert len(out.segments) < 2
    assert out.usage["output_tokens"] > 0 and out.usage["input_tokens"] > 0


def test_jobs_leave_the_media_budget_as_they_found_it(pipeline, files):
    """Decoded media counts against the shared-memory budget until the engine has it: after
    jobs that finished, failed to decode or were cancelled, nothing is held or in flight."""
    budget = pipeline.media_budget
    run(pipeline, request(task="caption"), files / "a.png")
    run_cancelled(pipeline, request(task="caption"), files / "a.mp4", ("decoding", 0, 1))
    bad = files / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(MediaError):
        run(pipeline, request(task="caption"), bad)
    assert budget.held == 0 and budget.in_flight == 0 and budget.peak > 0


def test_video_frame_buffers_go_back_to_the_pool(pipeline, files):
    """Once the engine has encoded a chunk, or a cancel left it unsubmitted, its frame buffer
    goes back to the pool worker that decoded it (one chunk per run here)."""
    pool = pipeline.media
    before = pool.handed_back
    run(pipeline, request(task="caption"), files / "a.mp4")
    run_cancelled(pipeline, request(task="caption"), files / "a.mp4", ("decoding", 0, 1))
    deadline = time.monotonic() + 10
    while pool.handed_back < before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the pool's dispatcher thread sends them
    assert pool.handed_back == before + 2


def test_jobs_submitted_together_run_at_once(pipeline, files):
    """`submit` returns before its job is done; every job of a batch finishes with its own
    result, each reporting its own progress."""
    paths = [files / "a.png", files / "a.wav", files / "a.png", files / "a.wav"]
    stages = [Stages() for _ in paths]
    jobs = [pipeline.submit(request(), p, s) for p, s in zip(paths, stages, strict=True)]
    assert not jobs[-1].wait(0), "submit waited for its job"
    outs = [j.result(timeout=120) for j in jobs]
    assert [o.usage.get("images", 0) for o in outs] == [1, 0, 1, 0]
    assert [o.usage.get("audio_seconds", 0) for o in outs] == pytest.approx([0, 3.0, 0, 3.0])
    for s in stages:
        assert s.seen[0] == ("decoding", 0, 1) and s.seen[-1] == ("generating", 1, 1)


def test_evs_rate_unset_is_the_checkpoints(pipeline, files, monkeypatch):
    """A request without `video.evs_rate` gets the checkpoint's `video_pruning_rate`; one that
    sets it gets its own."""
    video = {"fps": 2, "max_frames": 4}
    unset = request(task="caption", video=video)
    set_half = request(task="caption", video=video | {"evs_rate": 0.5})
    assert unset.video.evs_rate is None and pipeline.info.model.video_pruning_rate == 0.5
    half = run(pipeline, unset, files / "a.mp4").usage
    info = pipeline.info  # the same pipeline, read from a checkpoint that prunes nothing
    monkeypatch.setattr(
        pipeline, "info", replace(info, model=replace(info.model, video_pruning_rate=0.0))
    )
    kept = run(pipeline, unset, files / "a.mp4").usage
    asked = run(pipeline, set_half, files / "a.mp4").usage
    assert kept["video_tokens_after_evs"] == kept["video_tokens_before_evs"]
    assert half["video_tokens_after_evs"] < half["video_tokens_before_evs"]
    assert asked["video_tokens_after_evs"] == half["video_tokens_after_evs"]


def test_job_threads_run_at_most_max_jobs_at_once():
    """Jobs past `max_jobs` wait their turn; each gets its own result or error."""
    lock, release = threading.Lock(), threading.Event()
    running, most = 0, 0

    def run(job: Job, n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1
        if n == 2:
            raise ValueError("job 2 fails")
        return n

    threads = JobThreads(run, max_jobs=2)
    jobs = [Job(engine=None, name=str(n)) for n in range(4)]
    for n, job in enumerate(jobs):
        threads.submit(job, n)
    deadline = time.monotonic() + 10
    while running < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running == 2 and not any(j.wait(0) for j in jobs)
    release.set()
    assert [j.result(timeout=10) for j in (jobs[0], jobs[1], jobs[3])] == [0, 1, 3]
    with pytest.raises(ValueError, match="job 2 fails"):
        jobs[2].result()
    assert most == 2
    threads.close()


def test_a_workers_host_share_bounds_its_decoding_ahead(files, monkeypatch, tmp_path):
    """MEDIA_GB (N workers on one /dev/shm each get half / N) is the decode-ahead budget; an
    input larger than it still runs, alone; MEDIA_WORKERS and MAX_CONCURRENT_JOBS pass."""
    from contract.settings import WorkerSettings
    from workers.media_budget import shm_budget
    from workers.pipeline import PipelineConfig

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    share = WorkerSettings(media_gb=1e-5, media_workers=1, max_concurrent_jobs=3)
    small = Pipeline.load(None, "cpu", config=PipelineConfig.of(share, ignore_eos=True))
    try:
        assert small.media_budget.max_bytes == 10_000
        assert small.limits.max_decoded_bytes == shm_budget()  # what one input may hold
        assert (small.media.num_workers, small.config.max_jobs) == (1, 3)
        out = run(small, request(), files / "a.mp4")  # its frames: more than 10 KB
        assert out.usage["output_tokens"] == 6  # EOS ignored
        assert small.media_budget.peak > 10_000 and small.media_budget.held == 0
    finally:
        small.close()


def test_default_video_chunks_shrink_to_fit_the_engines_longest_sequence(pipeline, files):
    """Under a small cache (a small GPU_MEMORY_GB) a default chunk's prompt would not fit:
    the chunks get shorter instead of the job failing; a chunk the request sets is kept."""
    p = pipeline
    small = EngineConfig(max_running=4, kv_capacity_tokens=1024, max_seq_len=1024)
    tight = Pipeline(p.model, p.info, p.prompts, p.model_info, True, small)
    try:
        video = {"fps": 4, "max_frames": 16}  # the default chunk: the whole 4 s clip
        roomy = run(pipeline, request(task="caption", video=video), files / "a.mp4")
        assert roomy.usage["input_tokens"] > 1024 and roomy.segments is None
        out = run(tight, request(task="caption", video=video), files / "a.mp4")
        assert len(out.segments) >= 3 and out.usage["video_seconds"] == pytest.approx(4.0)
        assert out.segments[-1]["end_s"] == pytest.approx(4.0)
        with pytest.raises(MediaTooLong):
            run(tight, request(task="caption", video=video | {"chunk_s": 4}), files / "a.mp4")
    finally:
        tight.close()


def test_default_video_chunks_shrink_to_fit_the_encode_room(pipeline, files):
    """A cap that leaves a long sequence but little workspace (bf16 weights under 64 GiB): a
    default chunk's encoder outputs and prompt would not fit the engine's encode room, so the
    chunks get shorter instead of the job failing with resources_exhausted; a chunk the
    request sets that does not fit still fails so."""
    p = pipeline
    video = {"fps": 4, "max_frames": 16}  # the default chunk: the whole 4 s clip
    whole = run(p, request(task="caption", video=video), files / "a.mp4")
    tokens = whole.usage["input_tokens"]
    # room = tokens x prompt_row: the clip's prompt alone fills it, its encoder outputs beside
    # do not fit; a chunk of a quarter of it does
    small = EngineConfig(max_running=4, prompt_budget=tokens,
                         workspace_bytes=min_piece_bytes(p.engine.costs))  # fmt: skip
    tight = Pipeline(p.model, p.info, p.prompts, p.model_info, True, small)
    try:
        assert tight.engine.encode_room == tokens * p.engine.costs.prompt_row
        out = run(tight, request(task="caption", video=video), files / "a.mp4")
        assert len(out.segments) >= 2 and out.usage["video_seconds"] == pytest.approx(4.0)
        with pytest.raises(ResourcesExhausted):
            run(tight, request(task="caption", video=video | {"chunk_s": 4}), files / "a.mp4")
    finally:
        tight.close()
