"""Audio decode: any allowed container's first audio stream -> 16 kHz mono float32 -> AudioItem."""

from __future__ import annotations

import math

import av
import numpy as np
import torch

from media.errors import MediaTooLong, MediaUnreadable
from media.items import AudioItem
from media.limits import MediaLimits
from media.mel import SAMPLE_RATE, log_mel, split_clips
from media.probe import open_container


def _stream_start(stream: av.audio.stream.AudioStream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


# Decoded sample formats (planar "p" variants alike) -> numpy dtype, and the scale swresample
# uses to turn integers into floats.
_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64,
           "flt": np.float32, "dbl": np.float64}  # fmt: skip
_INT_SCALE = {"s16": 2.0**-15, "s32": 2.0**-31, "s64": 2.0**-63}


def decode_audio(path: str, demuxer: str, limits: MediaLimits) -> tuple[torch.Tensor, float] | None:
    """First audio stream -> (float32 [n] at 16 kHz mono, start time in seconds), None if no audio.

    (A video's soundtrack is decoded in the video's own demux pass: `AudioTrack`.)
    """
    with open_container(path, demuxer, limits) as c:
        if not c.streams.audio:
            return None
        track = AudioTrack(c.streams.audio[0], limits)
        try:
            for packet in c.demux(track.stream):
                track.feed(packet)
        except av.error.FFmpegError as e:
            track.fail(e)
        return track.result()


class AudioTrack:
    """One audio stream decoded as its packets arrive (`feed`), so a video's demux pass can
    carry its soundtrack; `result()` -> (float32 [n] at 16 kHz mono, start time in seconds).

    Each decoded frame is averaged over its channels first (a stereo file becomes the mean of
    its channels, not ffmpeg's -3 dB downmix), then the mono signal is resampled in pieces of
    about a second: one resampling pass instead of one per channel, and few resampler calls
    (the resampler streams, so its output does not depend on how the input is cut). A decode
    error ends the track: a damaged tail keeps what decoded cleanly, as players do.
    """

    def __init__(self, stream: av.audio.stream.AudioStream, limits: MediaLimits):
        self.stream = stream
        self.start = _stream_start(stream)
        self.max_samples = int(limits.max_duration_s * SAMPLE_RATE)
        self.mono = _MonoResampler()
        self.error: av.error.FFmpegError | None = None

    def feed(self, packet: av.Packet) -> None:
        """Decode one demuxed packet of this stream (the demuxer's empty last packet flushes)."""
        if self.error is not None:
            return
        try:
            for frame in self.stream.codec_context.decode(packet):
                self.mono.push(frame)
                if self.mono.total > self.max_samples:
                    raise MediaTooLong("the audio is longer than the duration limit")
        except av.error.FFmpegError as e:
            self.fail(e)

    def time_of(self, packet: av.Packet) -> float:
        """Seconds of a packet of this stream on the container timeline (-inf without pts)."""
        return float(packet.pts * self.stream.time_base) if packet.pts is not None else -math.inf

    def fail(self, error: av.error.FFmpegError) -> None:
        self.error = self.error or error

    def result(self) -> tuple[torch.Tensor, float]:
        self.mono.flush()
        if not self.mono.pieces:
            if self.error is not None:
                raise MediaUnreadable("the audio stream could not be decoded") from self.error
            return torch.zeros(0, dtype=torch.float32), self.start
        return torch.from_numpy(np.concatenate(self.mono.pieces)), self.start


class _MonoResampler:
    """Decoded frames -> channel mean -> 16 kHz float32 `pieces` (`total` samples so far).

    Each frame's channel bytes are kept until about a second has arrived; the channel mean
    then runs once over that block (per frame, numpy's call overhead cost more than the
    arithmetic).
    """

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.pending: list[list[memoryview]] = []  # per channel, per frame: its samples
        self.pending_len = 0
        self.layout = ("", False, 0)  # of `pending`: sample format, planar, channels
        self.total = 0
        self.rate = 0
        self.resampler: av.AudioResampler | None = None

    def push(self, frame: av.AudioFrame) -> None:
        if self.resampler is None:
            self.rate = frame.sample_rate
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        elif frame.sample_rate != self.rate:
            raise MediaUnreadable("the audio changes sample rate mid-stream (not supported)")
        fmt = frame.format
        layout = (fmt.name.removesuffix("p"), fmt.is_planar, frame.layout.nb_channels)
        if layout != self.layout:
            self._resample()  # a format or layout change mid-stream: averaged separately
            self.layout = layout
            self.pending = [[] for _ in range(layout[2] if layout[1] else 1)]
        size = frame.samples * fmt.bytes * (1 if layout[1] else layout[2])
        for chunks, plane in zip(self.pending, frame.planes, strict=False):
            chunks.append(memoryview(plane)[:size])  # planes may be padded past the samples
        self.pending_len += frame.samples
        if self.pending_len >= self.rate:
            self._resample()

    def flush(self) -> None:
        if self.resampler is not None:
            self._resample()
            self._take(self.resampler.resample(None))

    def _resample(self) -> None:
        if not self.pending_len:
            return
        name, planar, channels = self.layout
        dtype = _DTYPES[name]
        if planar:
            x = [np.frombuffer(b"".join(chunks), dtype) for chunks in self.pending]
        else:
            flat = np.frombuffer(b"".join(self.pending[0]), dtype)
            x = [flat[c::channels] for c in range(channels)]
        frame = av.AudioFrame.from_ndarray(
            _channel_mean(x, name)[None], format="flt", layout="mono"
        )
        frame.sample_rate = self.rate
        self.pending, self.pending_len = [[] for _ in self.pending], 0
        self._take(self.resampler.resample(frame))

    def _take(self, frames: list[av.AudioFrame]) -> None:
        for f in frames:
            self.pieces.append(f.to_ndarray().reshape(-1))
            self.total += f.samples


def _channel_mean(x: list[np.ndarray], name: str) -> np.ndarray:
    """Per channel [samples] of sample format `name` -> float32 [samples]: the mean over
    channels, integers scaled as swresample does."""
    total = _as_float(x[0], name)
    for d in x[1:]:
        total = total + _as_float(d, name)
    return total if len(x) == 1 else total * np.float32(1.0 / len(x))


def _as_float(x: np.ndarray, name: str) -> np.ndarray:
    if name == "u8":
        return (x.astype(np.float32) - 128.0) * np.float32(2.0**-7)
    if name in _INT_SCALE:
        return x.astype(np.float32) * np.float32(_INT_SCALE[name])
    return x.astype(np.float32, copy=False)


def audio_item(wave: torch.Tensor) -> AudioItem:
    """16 kHz mono float32 [n] -> AudioItem of per-clip log-mel features (docs/model.md
    §4.1–4.2)."""
    clips = split_clips(wave)
    return AudioItem(
        clips=[log_mel(c) for c in clips],
        num_samples=int(wave.shape[0]),
        clip_samples=[int(c.shape[0]) for c in clips],
    )


def process_audio(path: str, demuxer: str, limits: MediaLimits) -> AudioItem:
    decoded = decode_audio(path, demuxer, limits)
    if decoded is None:
        raise MediaUnreadable("the file has no audio stream")
    wave, _ = decoded
    if wave.shape[0] == 0:
        raise MediaUnreadable("the audio stream holds no samples")
    return audio_item(wave)
