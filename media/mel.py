"""128-bin log-mel features of 16 kHz mono audio exactly as docs/model.md §4.1; the 30 s clips of
§4.2."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

SAMPLE_RATE = 16000
N_FFT, WIN, HOP, N_MELS = 512, 400, 160, 128
PREEMPHASIS = 0.97
LOG_GUARD = 2.0**-24
NORM_EPS = 1e-5
CLIP_SAMPLES = 30 * SAMPLE_RATE
MIN_TAIL = SAMPLE_RATE // 10  # a last clip shorter than 0.1 s is zero-padded to 0.1 s


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney scale: linear below 1 kHz, logarithmic above."""
    log_step = 27.0 / math.log(6.4)
    return torch.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + torch.log(f / 1000.0) * log_step)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    log_step = math.log(6.4) / 27.0
    return torch.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * torch.exp((m - 15.0) * log_step))


@lru_cache(maxsize=1)
def mel_filters() -> torch.Tensor:
    """[128, 257] triangular Slaney-normalised filters over 0–8000 Hz.

    Built in float64 with the reference's rounding: the triangles are rounded to float32
    before the Slaney scaling, which rounds again; that gives its filters bit for bit.
    """
    fft_hz = torch.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1, dtype=torch.float64)
    lo, hi = _hz_to_mel(torch.tensor([0.0, SAMPLE_RATE / 2], dtype=torch.float64))
    edges = _mel_to_hz(torch.linspace(float(lo), float(hi), N_MELS + 2, dtype=torch.float64))
    gaps = edges.diff()  # [130]
    slopes = edges[None, :] - fft_hz[:, None]  # [257, 130]
    down = -slopes[:, :-2] / gaps[:-1]
    up = slopes[:, 2:] / gaps[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0).float().double()  # [257, 128]
    fb = fb * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return fb.T.contiguous().to(torch.float32)


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """wave: float32 [n] at 16 kHz -> normalised log-mel [n // 160, 128] (valid frames only).

    The centred STFT yields 1 + n // 160 frames; the last one covers zero padding and is the
    frame the reference zeroes, so it is dropped here. The float32 operations follow the
    reference's order (|STFT| then squared, as NeMo does; means as sum / count), so the
    features match it bit for bit rather than within rounding: some bins of steady signals
    are nearly constant, and their normalisation magnifies any rounding difference.
    """
    n = wave.shape[0]
    frames = n // HOP
    x = torch.cat([wave[:1], wave[1:] - PREEMPHASIS * wave[:-1]])
    window = torch.hann_window(WIN, periodic=False, dtype=torch.float32)
    spec = torch.stft(
        x, N_FFT, HOP, WIN, window, center=True, pad_mode="constant", return_complex=True
    )
    power = torch.view_as_real(spec).square().sum(-1).sqrt().square()  # [257, 1 + n // 160]
    logmel = torch.log(mel_filters() @ power + LOG_GUARD)[:, :frames]  # [128, frames]
    mean = logmel.sum(dim=1, keepdim=True) / frames
    std = ((logmel - mean).square().sum(dim=1, keepdim=True) / (frames - 1)).sqrt()
    return ((logmel - mean) / (std + NORM_EPS)).T.contiguous()


def split_clips(wave: torch.Tensor) -> list[torch.Tensor]:
    """Cut a 16 kHz waveform into ≤ 30 s clips; a tail under 0.1 s is zero-padded to 0.1 s."""
    clips = list(torch.split(wave, CLIP_SAMPLES)) or [wave.new_zeros(0)]
    if clips[-1].shape[0] < MIN_TAIL:
        clips[-1] = torch.nn.functional.pad(clips[-1], (0, MIN_TAIL - clips[-1].shape[0]))
    return clips
