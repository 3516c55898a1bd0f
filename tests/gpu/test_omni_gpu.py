"""The whole Omni model on the GPU (bf16, our kernels) against the CPU fp32 reference path.

Demo checkpoint, every modality in one prompt (non-square image, odd-frame video with EVS,
audio over 30 s), then greedy generation; the GPU prefill logits must track the CPU's.
"""

from __future__ import annotations

import pytest
import torch

from media.items import AudioItem, ImageItem, VideoItem
from workers.engine.generate import generate
from workers.engine.request import SamplingParams
from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.demo import write_demo_checkpoint
from workers.model.loader import load_model
from workers.model.omni import build_prompt_embeds
from workers.model.prompt import PromptBuilder

pytestmark = pytest.mark.gpu


def _items(g: torch.Generator) -> list:
    image = ImageItem(torch.randn(3, 16 * 12, 16 * 20, generator=g), (12, 20))
    frames = torch.randint(0, 256, (5, 3, 150, 230), generator=g, dtype=torch.uint8)  # decoded
    tubelets = torch.cat([frames, frames[-1:]]).reshape(3, 2, 3, 150, 230)
    video = VideoItem(tubelets, (8, 12), [0.5 * k for k in range(5)])
    clips = [torch.randn(3001, 128, generator=g), torch.randn(1001, 128, generator=g)]
    audio = AudioItem(clips, 640000, [480000, 160000])
    return [image, video, audio]


@torch.no_grad()
def test_gpu_bf16_matches_cpu_fp32(tmp_path):
    path = write_demo_checkpoint(tmp_path, seed=2)
    pb = PromptBuilder.from_dir(path)
    items = _items(torch.Generator().manual_seed(0))
    prompt = pb.render(items, "Describe everything.", thinking=False)
    logits = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        model, _ = load_model(path, device, dtype)
        embeds, ids, stats = build_prompt_embeds(model, pb.tokenizer, prompt, items, 0.5)
        assert embeds.device.type == device and embeds.dtype == dtype
        assert stats.video_tokens_after_evs < stats.video_tokens_before_evs
        gen = generate(model.llm, [embeds], [SamplingParams(max_tokens=8)])
        assert len(gen[0].ids) <= 8
        full = model.llm(embeds, *_prefill(model, embeds))
        logits[device] = model.llm.logits(full[-1:])[0].cpu()
        if device == "cuda":
            with ops.reference():
                ref = model.llm(embeds, *_prefill(model, embeds))
            kernel_vs_ref = (model.llm.logits(ref[-1:])[0].cpu() - logits["cuda"]).abs().max()
            assert kernel_vs_ref / logits["cuda"].abs().max() < 5e-2
    rel = (logits["cuda"] - logits["cpu"]).abs().max() / logits["cpu"].abs().max()
    assert rel < 5e-2, f"bf16 GPU vs fp32 CPU relative logit error {rel:.3f}"


def _prefill(model, embeds):
    n = embeds.shape[0]
    cache = HybridCache(model.config.llm, 1, n, n, embeds.device, embeds.dtype)
    slot = cache.alloc_slot()
    cache.reserve([slot], [n])
    return ForwardBatch.build([n], [slot], [0], embeds.device), cache
