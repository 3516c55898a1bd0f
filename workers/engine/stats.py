"""What the engine did per stage, for the benchmarks: work counts and (when profiling) seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from media.items import AudioItem, ImageItem, VideoItem


@dataclass
class StageStats:
    """Work done per engine stage since creation: counts always (plain integers), seconds
    only when `profile` is on, because each timed stage is then bracketed by
    `torch.cuda.synchronize` so its GPU time lands in it, a stall production steps skip.

    Stages: "encode" (towers, EVS, splicing), "prefill" and "decode" (LLM forwards),
    "sample" (LM head and sampling of both).
    """

    profile: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    # Of those seconds, until the stage's last launch returned (the rest: the GPU finishing),
    # and the engine thread's own CPU time: launch ≈ seconds means the stage is bound by its
    # launches, and a thread time well under the launch time that the thread waited (the GIL).
    launch_seconds: dict[str, float] = field(default_factory=dict)
    thread_seconds: dict[str, float] = field(default_factory=dict)
    # Each timed stage's (name, start, end) in epoch nanoseconds, the clock of torch's
    # profiler: benchmarks/gpu_busy.py sets them against the kernels that ran.
    windows: list[tuple[str, int, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_forwards: int = 0  # prefill_tokens / prefill_forwards: the mean forward
    encode_groups: int = 0  # groups encoded together (a retry after an out-of-memory too)
    decode_tokens: int = 0  # tokens fed to decode forwards
    decode_steps: int = 0  # decode forwards (decode_tokens / decode_steps: the mean batch)
    # Of those, steps with no prompt chunk and no request waiting to be encoded: the engine
    # had nothing else to run, so the batch was whatever was decoding (media arriving slower
    # than the engine takes it shows as many of these, at small batches).
    lone_decode_steps: int = 0
    idle_seconds: float = 0.0  # the engine thread waiting for a request, with nothing to run
    sampled_tokens: int = 0
    vision_patches: int = 0  # ViT patch positions (a tubelet's two frames share one)
    audio_seconds: float = 0.0
    peak_unprefilled: int = 0  # most encoded prompt tokens waiting for prefill after an admission
    peak_batch: int = 0  # most requests one step computed (decoded or prefilled together)
    # CUDA out-of-memory errors recovered from, per stage ("upload": media left on the host
    # for the engine to copy): each one emptied the allocator's cache and retried smaller.
    ooms: dict[str, int] = field(default_factory=dict)

    def count_oom(self, stage: str) -> None:
        self.ooms[stage] = self.ooms.get(stage, 0) + 1

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        if not self.profile:
            yield
            return
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        sync()
        t, cpu, start = time.perf_counter(), time.thread_time(), time.time_ns()
        try:
            yield
        finally:
            launched, cpu = time.perf_counter(), time.thread_time() - cpu
            sync()
            self.windows.append((name, start, time.time_ns()))
            for counter, value in ((self.seconds, time.perf_counter() - t),
                                   (self.launch_seconds, launched - t),
                                   (self.thread_seconds, cpu)):  # fmt: skip
                counter[name] = counter.get(name, 0.0) + value

    def count_media(self, items: list[ImageItem | VideoItem | AudioItem]) -> None:
        self.vision_patches += vision_patches(items)
        for item in items:
            audio = item.audio if isinstance(item, VideoItem) else item
            if isinstance(audio, AudioItem):
                self.audio_seconds += audio.seconds


def vision_patches(items: list[ImageItem | VideoItem | AudioItem]) -> int:
    """ViT patch positions of `items`: the encoder's work (a tubelet's two frames share one)."""
    n = 0
    for item in items:
        if not isinstance(item, AudioItem):
            frames = item.num_tubelets if isinstance(item, VideoItem) else 1
            n += frames * item.grid[0] * item.grid[1]
    return n
