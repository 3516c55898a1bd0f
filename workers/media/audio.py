"""Audio decode: any allowed container's first audio stream -> 16 kHz mono float32 -> AudioItem."""

from __future__ import annotations

import av
import numpy as np
import torch

from workers.media.errors import MediaTooLong, MediaUnreadable
from workers.media.items import AudioItem
from workers.media.limits import MediaLimits
from workers.media.mel import SAMPLE_RATE, log_mel, split_clips
from workers.media.probe import open_container


def _stream_start(stream: av.audio.stream.AudioStream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def decode_audio(path: str, demuxer: str, limits: MediaLimits) -> tuple[torch.Tensor, float] | None:
    """First audio stream -> (float32 [n] at 16 kHz mono, start time in seconds), None if no audio.

    Channels are averaged after resampling (each channel resampled on its own), so a stereo
    file becomes the mean of its channels rather than ffmpeg's -3 dB downmix.
    """
    max_samples = int(limits.max_duration_s * SAMPLE_RATE)
    with open_container(path, demuxer, limits) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        start = _stream_start(stream)
        resampler = None
        channels = 1
        chunks: list[np.ndarray] = []  # interleaved float32 samples, one array per frame
        total = 0
        try:
            for frame in c.decode(stream):
                if resampler is None:
                    channels = len(frame.layout.channels)
                    # Packed output: one buffer per frame; the channel mean runs once at the end.
                    layout = frame.layout.name
                    resampler = av.AudioResampler(format="flt", layout=layout, rate=SAMPLE_RATE)
                total += _append(chunks, resampler.resample(frame), channels)
                if total > max_samples:
                    raise MediaTooLong("the audio is longer than the duration limit")
            if resampler is not None:
                total += _append(chunks, resampler.resample(None), channels)
        except av.error.FFmpegError as e:
            if not chunks:
                raise MediaUnreadable("the audio stream could not be decoded") from e
            # A damaged tail keeps what decoded cleanly; players do the same.
    if not chunks:
        return torch.zeros(0, dtype=torch.float32), start
    wave = np.concatenate(chunks).reshape(-1, channels)
    return torch.from_numpy(
        wave.mean(axis=1, dtype=np.float32) if channels > 1 else wave[:, 0]
    ), start


def _append(chunks: list[np.ndarray], frames: list[av.AudioFrame], channels: int) -> int:
    """Adds each frame's interleaved samples; returns the samples per channel added."""
    n = 0
    for f in frames:
        chunks.append(f.to_ndarray().reshape(-1))  # [1, samples·channels] float32
        n += f.samples
    return n


def audio_item(wave: torch.Tensor) -> AudioItem:
    """16 kHz mono float32 [n] -> AudioItem of per-clip log-mel features (spec §4.1–4.2)."""
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
