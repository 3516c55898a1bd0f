"""The full-size Omni model on the GPU, one modality at a time (run with `pytest -m gpu -s`).

For each modality the prompt embeddings are built on the kernel path and on the PyTorch
reference path (towers, EVS), then fed through every LLM layer on both paths from the same
input and state (layer_parity.py), in two prefill chunks. Random bf16 weights; the demo
checkpoint supplies the tokenizer and chat template.
"""

from __future__ import annotations

import pytest
import torch

from tests.factories import make_audio, make_image, make_video
from tests.gpu.layer_parity import assert_layers_match, compare_layers
from workers.model import ops
from workers.model.demo import write_demo_checkpoint
from workers.model.fullsize import build_fullsize_omni
from workers.model.omni import build_prompt_embeds
from workers.model.prompt import PromptBuilder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

EVS = 0.5
CASES = {
    "image_1920x1088": lambda g: [make_image((68, 120), g)],
    "video_16_9_odd_frames_evs": lambda g: [make_video(9, (24, 42), g)],
    "audio_35s": lambda g: [make_audio([480000, 80000], g)],
    "video_with_soundtrack": lambda g: [make_video(4, (24, 42), g, make_audio([64000], g))],
}


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    write_demo_checkpoint(d)
    return build_fullsize_omni(), PromptBuilder.from_dir(d)


@pytest.mark.parametrize("case", list(CASES))
def test_modality_matches_reference_path(omni, case):
    model, pb = omni
    items = CASES[case](torch.Generator().manual_seed(0))
    prompt = pb.render(items, "Describe what you see and hear.", thinking=False)
    fast, _, fast_stats = build_prompt_embeds(model, pb.tokenizer, prompt, items, EVS)
    with ops.reference():
        ref, _, ref_stats = build_prompt_embeds(model, pb.tokenizer, prompt, items, EVS)
    assert fast_stats == ref_stats  # the EVS kernel kept exactly the reference's tokens
    rel = ((fast.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"{case}: {ref.shape[0]} prompt tokens, embeddings rel. error {rel:.2e}")
    assert rel < 1e-2
    n = ref.shape[0]
    cut = n // 2
    steps = [(ref[:cut], [cut], [0]), (ref[cut:], [n - cut], [cut])]
    cos, state_err = compare_layers(model.llm, steps)
    assert_layers_match(cos, state_err, case)
