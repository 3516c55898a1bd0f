"""Decode only the frames sampling needs, frame-exact.

One demux pass reads packets (cheap) and buffers one GOP at a time. When the next keyframe
arrives, the buffered GOP is decoded only if a pending target time falls before that
keyframe; otherwise it is dropped undecoded. Decoding a GOP stops as soon as its targets
are served (the rest of it is never decoded). The frame for a target time t is the one
within half a frame of t (the i-th frame of a constant-rate stream, robust to millisecond
time bases), or, across a gap of a variable-rate stream, the last frame before t.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import av
import torch

from media.audio import AudioTrack
from media.errors import MediaUnreadable

MAX_GOP_PACKETS = 1024  # a stream without keyframe flags is decoded in slices this long


@dataclass(frozen=True)
class DecodeConfig:
    threads: int = 1  # decoder threads; 1 per pool worker gives the best host throughput
    skip_gops: bool = True  # never decode a GOP, or a GOP's tail, that holds no target
    skip_nonref: bool = True  # don't decode non-reference frames that are not sampled


DEFAULT_DECODE = DecodeConfig()


class _Sampler:
    """Assigns decoded frames (in presentation order) to sorted target times."""

    def __init__(self, times: list[float], slack: float, time_base):
        self.times, self.slack = times, slack
        # pts -> seconds in integers: Python's int division rounds correctly, so this is
        # float(pts * time_base) exactly, without building a Fraction per packet.
        self._num, self._den = time_base.numerator, time_base.denominator
        self.next = 0
        self.prev: av.VideoFrame | None = None
        self.prev_rgb: torch.Tensor | None = None
        self.out: list[torch.Tensor] = []  # emitted, not yet handed out
        self.emitted = 0

    def seconds(self, pts: int) -> float:
        return pts * self._num / self._den

    @property
    def done(self) -> bool:
        return self.next == len(self.times)

    def pending_before(self, t: float) -> bool:
        return not self.done and self.times[self.next] < t - self.slack

    def before_next(self, pts: int) -> bool:
        """Whether a frame at `pts` is shown before the next target's window."""
        return not self.done and self.seconds(pts) < self.times[self.next] - self.slack

    def push(self, frame: av.VideoFrame) -> None:
        if frame.pts is None:
            return
        t = self.seconds(frame.pts)
        while not self.done and t > self.times[self.next] + self.slack:
            self._emit(self.prev if self.prev is not None else frame)  # a gap: the frame on screen
        self.prev, self.prev_rgb = frame, None
        while not self.done and t >= self.times[self.next] - self.slack:
            self._emit(frame)  # the nearest frame: served now, no need to see the next one

    def finish(self) -> None:
        # Frames may stop a little before the declared end (a held last frame); a gap longer
        # than max(1 s, 2 frames) means the file was cut short.
        if self.prev is not None and not self.done:
            last = self.seconds(self.prev.pts)
            if self.times[-1] - last > max(1.0, 4 * self.slack):
                raise MediaUnreadable(
                    "the video stream ends before its declared duration (truncated?)"
                )
        while not self.done and self.prev is not None:
            self._emit(self.prev)

    def _emit(self, frame: av.VideoFrame) -> None:
        # RGB conversion happens once per distinct frame, only for frames that are used.
        if frame is not self.prev or self.prev_rgb is None:
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            if frame is self.prev:
                self.prev_rgb = rgb
        else:
            rgb = self.prev_rgb
        self.out.append(rgb)
        self.next += 1
        self.emitted += 1

    def drain(self) -> list[torch.Tensor]:
        out, self.out = self.out, []
        return out


def configure(stream: av.video.stream.VideoStream, cfg: DecodeConfig) -> None:
    ctx = stream.codec_context
    ctx.thread_count = cfg.threads
    ctx.thread_type = "AUTO" if cfg.threads > 1 else "SLICE"


def decode_frames(
    c: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    times: list[float],
    fps: float,
    cfg: DecodeConfig,
    audio: AudioTrack | None = None,
    audio_until: float = math.inf,
) -> Iterator[torch.Tensor]:
    """uint8 [H, W, 3] RGB frames (stored orientation), one per sorted target time in seconds.

    `configure` must have run on the stream before its first decode. With `audio`, the same
    demux pass feeds that track every packet of its stream (so the file is read once), until
    the frames are done and the track has passed `audio_until` seconds.
    """
    ctx = stream.codec_context
    sampler = _Sampler(times, slack=0.5 / fps, time_base=stream.time_base)
    gop: list[av.Packet] = []
    restart = False  # the decoder holds an unfinished GOP: drain and flush before the next
    streams = [stream] if audio is None else [stream, audio.stream]
    try:
        for packet in c.demux(*streams):
            if packet.stream_index != stream.index:
                audio.feed(packet)
                if sampler.done and audio.time_of(packet) > audio_until:
                    break
                continue
            if not packet.size or sampler.done:  # done: still demuxing for the audio
                continue
            key = packet.is_keyframe and packet.pts is not None
            if gop and (key or len(gop) >= MAX_GOP_PACKETS):
                # Only a keyframe boundary lets the decoder stop here and restart cleanly.
                end = sampler.seconds(packet.pts) if key and cfg.skip_gops else math.inf
                if sampler.pending_before(end):
                    restart = _decode_gop(ctx, gop, sampler, restart, end, cfg.skip_nonref)
                    yield from sampler.drain()
                else:
                    restart = True
                gop = []
                if sampler.done and audio is None:
                    break
            gop.append(packet)
        if not sampler.done:
            _decode_gop(ctx, gop, sampler, restart, math.inf, cfg.skip_nonref)
            for frame in ctx.decode(None):
                sampler.push(frame)
    except av.error.FFmpegError as e:
        if audio is not None:
            audio.fail(e)  # a broken container ends the soundtrack where it broke
        if sampler.emitted == 0 and sampler.prev is None:
            raise MediaUnreadable("the video stream could not be decoded") from e
    sampler.finish()
    if sampler.emitted != len(times):
        raise MediaUnreadable("the video stream has no decodable frame")
    yield from sampler.drain()


def _decode_gop(
    ctx: av.codec.context.CodecContext,
    gop: list[av.Packet],
    sampler: _Sampler,
    restart: bool,
    end: float,
    skip_nonref: bool,
) -> bool:
    """Decode packets until no target before `end` (the next keyframe's time) is pending.

    With skip_nonref, a packet shown before the next target is decoded only if other frames
    reference it: the codec drops it otherwise (skip_frame NONREF), which is exact because
    nothing else depends on it. Returns whether it stopped before the GOP's last packet
    (the decoder must then restart).
    """
    if restart:
        for frame in ctx.decode(None):
            sampler.push(frame)
        ctx.flush_buffers()
    for n, packet in enumerate(gop, start=1):
        if skip_nonref:
            early = packet.pts is not None and sampler.before_next(packet.pts)
            ctx.skip_frame = "NONREF" if early else "DEFAULT"
        for frame in ctx.decode(packet):
            sampler.push(frame)
        if not sampler.pending_before(end):
            return n < len(gop)
    return False
