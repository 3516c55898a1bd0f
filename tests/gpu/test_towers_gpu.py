"""Full-size vision and audio towers with random weights on CUDA: shapes, finiteness, bf16 vs fp32.

Run on the GPU machine: `python -m pytest -q -s -m gpu tests/gpu/test_towers_gpu.py`.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from media.items import AudioItem, ImageItem, VideoItem
from media.resize import video_pixels
from workers.model.audio import AudioEncoder, encode_audios
from workers.model.config import AudioConfig, OmniConfig, VisionConfig
from workers.model.fullsize import init_tower_random_
from workers.model.host_copy import host_to_device
from workers.model.projectors import SoundProjector, VisionProjector
from workers.model.vision import RadioViT, encode_visual

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CFG = OmniConfig()
OUT = CFG.llm.hidden_size


def _pair(module: nn.Module, seed: int) -> tuple[nn.Module, nn.Module]:
    fp32 = init_tower_random_(module.cuda(), seed)
    return fp32, copy.deepcopy(fp32).to(torch.bfloat16)


def _assert_close_bf16(bf16: torch.Tensor, fp32: torch.Tensor, centred_tol: float) -> None:
    assert torch.isfinite(bf16).all() and torch.isfinite(fp32).all()
    a = bf16.float().reshape(-1, bf16.shape[-1])
    b = fp32.reshape(-1, fp32.shape[-1])
    rel = ((a - b).norm() / b.norm()).item()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    # random towers put a large shared component in every row; the centred error checks the
    # token-to-token part on its own
    a, b = a - a.mean(0), b - b.mean(0)
    rel_centred = ((a - b).norm() / b.norm()).item()
    print(f"  bf16 vs fp32: rel L2 {rel:.4f}, cosine {cos:.5f}, centred rel L2 {rel_centred:.4f}")
    assert rel < 0.05 and cos > 0.998 and rel_centred < centred_tol


@torch.no_grad()
def test_vision_tower_full_size():
    vit32, vit16 = _pair(RadioViT(VisionConfig()), 0)
    mlp32, mlp16 = _pair(
        VisionProjector(CFG.vision_feature_size, CFG.projector_hidden_size, OUT), 1
    )
    gen = torch.Generator().manual_seed(0)
    items = [
        ImageItem(torch.randn(3, 16 * 32, 16 * 48, generator=gen), (32, 48)),
        ImageItem(torch.randn(3, 16 * 48, 16 * 32, generator=gen), (48, 32)),  # same length
        ImageItem(torch.randn(3, 16 * 68, 16 * 120, generator=gen), (68, 120)),  # 1080p
        VideoItem(  # 720p frames as decoded: the resize runs on the GPU
            torch.randint(0, 256, (4, 2, 3, 720, 1280), generator=gen, dtype=torch.uint8),
            (24, 42),
            [0.0] * 8,
        ),
    ]
    out32 = encode_visual(vit32, mlp32, items)
    out16 = encode_visual(vit16, mlp16, items)
    assert [tuple(o.shape) for o in out16] == [
        (384, OUT),
        (384, OUT),
        (2040, OUT),
        (4, 12, 21, OUT),
    ]
    for a, b in zip(out16, out32, strict=True):
        assert a.dtype == torch.bfloat16
        _assert_close_bf16(a, b, centred_tol=0.1)


@torch.no_grad()
def test_audio_tower_full_size():
    enc32, enc16 = _pair(AudioEncoder(AudioConfig()), 2)
    proj32, proj16 = _pair(SoundProjector(1024, CFG.sound_projection_hidden_size, OUT), 3)
    gen = torch.Generator().manual_seed(1)
    sizes = [480000, 480000, 80000]  # 65 s: two full clips and 5 s
    clips = [torch.randn(n // 160 + 1, 128, generator=gen) for n in sizes]
    item = AudioItem(clips, num_samples=sum(sizes), clip_samples=sizes)
    (out32,) = encode_audios(enc32, proj32, [item])
    (out16,) = encode_audios(enc16, proj16, [item])
    assert out16.shape == (item.num_tokens, OUT) == (375 + 375 + 63, OUT)
    # a random 24-layer conformer washes out most of the token-to-token signal (measured on
    # CPU: the centred error grows from 1 % after layer 0 to ~11 % by layer 8, then stays), so
    # the centred tolerance is looser than the vision tower's
    _assert_close_bf16(out16, out32, centred_tol=0.3)


def test_video_resize_on_gpu_matches_cpu():
    """The GPU resize + normalise gives the pixels the CPU one does (the goldens check CPU)."""
    gen = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 256, (2, 2, 3, 720, 1280), generator=gen, dtype=torch.uint8)
    cpu = video_pixels(u8, (24, 42))
    gpu = video_pixels(u8.cuda(), (24, 42))
    assert gpu.is_cuda and gpu.shape == cpu.shape == (2, 2, 3, 384, 672)
    assert (gpu.cpu() - cpu).abs().max() < 1e-3  # normalised units: ≈ 0.07 grey levels


@torch.no_grad()
def test_vit_throughput_32_tubelets():
    """Prints ViT throughput (no assertion on speed): 32 tubelets of 32×32 patches, bf16."""
    vit = init_tower_random_(RadioViT(VisionConfig()).cuda(), 4).to(torch.bfloat16)
    cfg = vit.cfg
    n, grid = 32, (32, 32)
    patches = torch.randn(
        n, grid[0] * grid[1], 2 * cfg.patch_dim, device="cuda", dtype=torch.bfloat16
    )
    seqs = vit.embed(patches, grid, video=True)
    length = seqs.shape[1]
    for _ in range(2):
        out = vit(seqs)
    torch.cuda.synchronize()
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
        out = vit(seqs)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - start) / reps
    d, m = cfg.hidden_size, cfg.mlp_size
    # per token per block: qkv + proj + fc1 + fc2 GEMMs, then QK^T and PV over the sequence
    flops = n * length * cfg.num_layers * (2 * (4 * d * d + 2 * d * m) + 4 * length * d)
    print(
        f"\n  ViT-H bf16, {n} tubelets × {length} tokens: {dt * 1e3:.1f} ms, "
        f"{n * length / dt:,.0f} tokens/s, {flops / dt / 1e12:.0f} TFLOP/s"
    )
    assert out.shape == (n, grid[0] * grid[1], d) and torch.isfinite(out).all()


def test_frames_reach_the_gpu_through_pinned_memory_strides_kept():
    """Decoded frames (a channels-last view, as the pool hands them over) arrive equal, in the
    same layout; frames a job thread already uploaded are passed through."""
    gen = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (5, 36, 52, 3), generator=gen, dtype=torch.uint8)
    view = frames.permute(0, 3, 1, 2)  # [5, 3, 36, 52]
    moved = host_to_device(view, torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved.is_cuda and moved.stride() == view.stride()
    assert torch.equal(moved.cpu(), view)
    assert host_to_device(moved, torch.device("cuda")) is moved
