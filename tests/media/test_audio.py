"""Audio formats -> 16 kHz mono, the 30 s clip split, silence."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from media.audio import audio_item, decode_audio
from media.limits import MediaLimits
from media.options import MediaOptions
from media.pipeline import process
from media.probe import kind_of
from tests.media.corpus import write_audio

LIMITS = MediaLimits()

FORMATS = [
    ("wav", "wav", "pcm_s16le", 22050, 2),
    ("flac", "flac", "flac", 44100, 1),
    ("ogg", "ogg", "libopus", 48000, 2),
    ("ogg", "ogg", "vorbis", 44100, 2),
    ("mp3", "mp3", "libmp3lame", 44100, 2),
    ("m4a", "ipod", "aac", 48000, 2),
]


@pytest.mark.parametrize("ext,container,codec,rate,channels", FORMATS)
def test_formats_decode_to_16k_mono(tmp_path, ext, container, codec, rate, channels):
    path = write_audio(
        str(tmp_path / f"a.{ext}"),
        container=container,
        codec=codec,
        rate=rate,
        channels=channels,
        seconds=1.5,
    )
    (item,) = process(path, MediaOptions())
    # lossy codecs add priming/padding samples; the length must still be 1.5 s within ~60 ms
    assert abs(item.num_samples - 24000) < 1000
    (clip,) = item.clips
    assert clip.shape == (item.num_samples // 160, 128) and torch.isfinite(clip).all()
    wave, _ = decode_audio(path, kind_of(path, LIMITS).demuxer, LIMITS)
    peak_hz = int(torch.fft.rfft(wave).abs().argmax()) * 16000 / wave.shape[0]
    assert min(abs(peak_hz - 440), abs(peak_hz - 880)) < 10  # the tone survives resampling


def test_long_audio_is_split_into_30s_clips():
    wave = torch.from_numpy(
        np.random.default_rng(0).standard_normal(16000 * 61 + 800).astype(np.float32)
    )
    item = audio_item(wave)
    assert item.clip_samples == [480000, 480000, 16800]
    assert [c.shape[0] for c in item.clips] == [3000, 3000, 105]
    assert item.num_tokens == 375 + 375 + 14


def test_tiny_tail_is_padded_to_a_tenth_of_a_second():
    item = audio_item(torch.ones(16000 * 30 + 100))
    assert item.clip_samples == [480000, 1600]


def test_silence_is_valid(tmp_path):
    path = str(tmp_path / "s.wav")
    with av.open(path, "w") as out:
        s = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    (item,) = process(path, MediaOptions())
    assert item.num_samples == 16000 and torch.isfinite(item.clips[0]).all()
    # a constant log-mel normalises to (rounding noise)/(std + 1e-5): small, as in the reference
    assert item.clips[0].abs().max() < 1
