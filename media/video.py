"""Video: metadata, chunk/sample planning, frame-exact sparse decode, tubelets (docs/model.md
§3.1–3.5).

Frame indices follow the reference's convention: index i is the frame shown at i / fps of
the stream's average rate, measured from the stream's first timestamp (so non-zero start
times and VFR streams sample by true presentation time, not by decode count). Per chunk,
n = min(max_frames, max(1, int(frames / fps_src · fps))) indices i0 + k·frames // n are
taken, and each is labelled i · int(1000 / fps_src) / 1000 s, as the reference prompt does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import torch

from media.audio import AudioTrack, audio_item
from media.errors import MediaTooLarge, MediaTooLong, MediaUnreadable
from media.frame_buffers import BufferId, FrameBuffers
from media.items import AudioItem, VideoItem
from media.limits import MediaLimits, check_decoded_bytes
from media.mel import SAMPLE_RATE
from media.options import MediaOptions
from media.probe import open_container
from media.resize import video_grid
from media.video_decode import DEFAULT_DECODE, DecodeConfig, configure, decode_frames

AUDIO_MARGIN_S = 1.0


@dataclass(frozen=True)
class VideoInfo:
    fps: float  # average frame rate of the stream
    frames: int  # frame count (container's, else duration · fps)
    start: float  # seconds of the first frame on the container timeline
    width: int  # after rotation
    height: int
    rotation: int  # degrees counter-clockwise the frames must be turned to display upright

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def video_stream(c: av.container.InputContainer) -> av.video.stream.VideoStream:
    for s in c.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:
            return s
    raise MediaUnreadable("the file has no video stream")


def _rotation(stream: av.video.stream.VideoStream) -> int:
    """Rotation from the stream's display matrix, a multiple of 90 degrees."""
    try:
        frame = next(iter(stream.container.decode(stream)))
    except (StopIteration, av.error.FFmpegError) as e:
        raise MediaUnreadable("the video stream has no decodable frame") from e
    return int(round(frame.rotation / 90.0)) * 90 % 360


def probe_video(c: av.container.InputContainer, limits: MediaLimits) -> VideoInfo:
    s = video_stream(c)
    rate = s.average_rate or s.guessed_rate or s.base_rate
    if not rate or s.width <= 0 or s.height <= 0:
        raise MediaUnreadable("the video stream has no frame rate or size")
    fps = float(rate)
    if s.width * s.height > limits.max_video_pixels:
        raise MediaTooLarge("the video frame size is over the pixel limit")
    start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
    if s.duration is not None:
        duration = float(s.duration * s.time_base)
    elif c.duration is not None:
        duration = c.duration / 1e6 - (start - (c.start_time or 0) / 1e6)
    else:
        duration = 0.0
    if duration > limits.max_duration_s:
        raise MediaTooLong("the video is longer than the duration limit")
    frames = s.frames or max(1, round(duration * fps))
    rotation = _rotation(s)
    c.seek(0)
    w, h = (s.height, s.width) if rotation in (90, 270) else (s.width, s.height)
    return VideoInfo(fps=fps, frames=frames, start=start, width=w, height=h, rotation=rotation)


def plan_chunks(info: VideoInfo, opts: MediaOptions) -> list[tuple[float, float, list[int]]]:
    """[(start_s, end_s, frame indices)] per chunk of the requested range."""
    begin = max(0.0, opts.start_s or 0.0)
    end = min(info.duration, opts.end_s if opts.end_s is not None else info.duration)
    if end <= begin:
        raise MediaUnreadable("the requested time range holds no video")
    chunk = opts.chunk_s or opts.max_frames / opts.fps
    chunks = []
    a = begin
    while a < end - 1e-9:
        b = min(a + chunk, end)
        i0 = min(info.frames - 1, math.ceil(a * info.fps - 1e-6))
        i1 = min(info.frames, max(i0 + 1, math.ceil(b * info.fps - 1e-6)))
        total = i1 - i0
        n = min(opts.max_frames, max(1, int(total / info.fps * opts.fps)))
        chunks.append((a, b, [i0 + k * total // n for k in range(n)]))
        a = b
    return chunks


def process_video(
    path: str,
    demuxer: str,
    opts: MediaOptions,
    limits: MediaLimits,
    cfg: DecodeConfig = DEFAULT_DECODE,
    shared: FrameBuffers | None = None,
) -> list[VideoItem]:
    """One VideoItem per chunk, each with the soundtrack of its time range when asked; with
    `shared` (a pool worker's), the frames are in its shared-memory buffers."""
    with open_container(path, demuxer, limits) as c:
        configure(video_stream(c), cfg)
        info = probe_video(c, limits)
        chunks = plan_chunks(info, opts)
        frames = sum(len(idx) + len(idx) % 2 for *_, idx in chunks)
        check_decoded_bytes(frames * info.height * info.width * 3, limits)
        grid = video_grid(info.height, info.width)
        # Frames go straight into their chunk's buffer as decoded, channels last (a plain copy;
        # the planar transpose and the resize run on the GPU): uint8 [2·ceil(F/2), H, W, 3].
        size = (info.height, info.width)
        buffers, ids = zip(
            *(_frame_buffer((len(idx) + len(idx) % 2, *size, 3), shared) for *_, idx in chunks),
            strict=True,
        )
        slots: dict[int, list[tuple[int, int]]] = {}
        for ci, (*_, idx) in enumerate(chunks):
            for k, i in enumerate(idx):
                slots.setdefault(i, []).append((ci, k))
        wanted = sorted(slots)
        times = [info.start + i / info.fps for i in wanted]
        audio = c.streams.audio[0] if opts.use_audio and c.streams.audio else None
        track = AudioTrack(audio, limits) if audio is not None else None
        # A part of a longer video (start_s / end_s) needs its soundtrack only a little past
        # its end: the margin keeps the resampler's last outputs inside the part exact.
        until = info.start + chunks[-1][1] + AUDIO_MARGIN_S
        frames = decode_frames(c, video_stream(c), times, info.fps, cfg, track, until)
        for i, rgb in zip(wanted, frames, strict=True):
            pixels = _rotate(rgb, info.rotation)
            if tuple(pixels.shape[:2]) != size:
                raise MediaUnreadable("the video changes frame size mid-stream (not supported)")
            for ci, k in slots[i]:
                buffers[ci][k] = pixels
        soundtrack = track.result() if track is not None else None
    step_ms = int(1000.0 / info.fps)
    items = []
    for (a, b, idx), buf, buffer_id in zip(chunks, buffers, ids, strict=True):
        if len(idx) % 2:
            buf[-1] = buf[-2]  # odd frame count: the last frame is repeated
        item = VideoItem(
            tubelets=buf.view(-1, 2, *buf.shape[1:]).permute(0, 1, 4, 2, 3),
            grid=grid,
            timestamps=[i * step_ms / 1000.0 for i in idx],
            start_s=a,
            end_s=b,
            video_s=info.duration,
            buffer=buffer_id,
        )
        if soundtrack is not None:
            item.audio = _soundtrack_of(soundtrack, a + info.start, b + info.start)
        items.append(item)
    return items


def _frame_buffer(
    shape: tuple[int, ...], shared: FrameBuffers | None
) -> tuple[torch.Tensor, BufferId | None]:
    if shared is None:
        return torch.empty(shape, dtype=torch.uint8), None
    return shared.new(shape)


def _soundtrack_of(soundtrack: tuple[torch.Tensor, float], a: float, b: float) -> AudioItem | None:
    """Audio of [a, b) seconds on the container timeline, None when that range is empty."""
    wave, start = soundtrack
    lo = max(0, round((a - start) * SAMPLE_RATE))
    part = wave[lo : max(lo, round((b - start) * SAMPLE_RATE))]
    return audio_item(part) if part.shape[0] > 0 else None


def _rotate(rgb: torch.Tensor, rotation: int) -> torch.Tensor:
    """[H, W, 3] turned `rotation` degrees counter-clockwise."""
    return torch.rot90(rgb, k=rotation // 90, dims=(0, 1)) if rotation else rgb
