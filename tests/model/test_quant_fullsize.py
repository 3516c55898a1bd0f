"""The random full-size model in each published layout, on a tiny config on the CPU: what the
GPU test (tests/gpu/test_quant_model_gpu.py) relies on."""

from __future__ import annotations

import pytest
import torch

from workers.model.demo import demo_config_dict
from workers.model.fullsize import build_fullsize, build_fullsize_omni, quantize_from_, random_block
from workers.model.hf_config import parse_omni
from workers.model.nemotron_h import Block
from workers.model.quant import FP8, NVFP4, QuantPlan

CONFIG = parse_omni(demo_config_dict())
LLM = CONFIG.llm
_CALIBRATED = ("input_scale", "k_scale", "v_scale")


def test_bf16_layers_are_random_block():
    model = build_fullsize(LLM, "cpu", torch.float32, seed=3)
    assert torch.all(model.norm_f.weight == 1) and model.lm_head.weight.std() > 0.01
    for i, layer in enumerate(model.layers):
        alone = random_block(LLM, i, "cpu", torch.float32, seed=3).state_dict()
        assert all(torch.equal(t, alone[n]) for n, t in layer.state_dict().items()), i


@pytest.mark.parametrize("precision", [FP8, NVFP4])
def test_quantized_layers_are_their_bf16_originals_quantized(precision):
    model = build_fullsize_omni(CONFIG, "cpu", torch.float32, seed=3, precision=precision)
    llm = model.llm
    assert llm.plan == QuantPlan.recipe(LLM, precision) and llm.precision == precision
    for i, layer in enumerate(llm.layers):
        want = Block(LLM, i, llm.plan, device="meta", dtype=torch.float32)
        want.to_empty(device="cpu")
        quantize_from_(want, random_block(LLM, i, "cpu", torch.float32, seed=3))
        want = want.state_dict()
        for name, t in layer.state_dict().items():
            if name.endswith(_CALIBRATED):
                assert t.dtype == torch.float32 and torch.all(t > 0), (i, name)
            else:
                assert torch.equal(t, want[name]), (i, name)
    towers = (model.vit, model.mlp1, model.sound_encoder, model.sound_projection)
    assert all(p.dtype == torch.float32 for t in towers for p in t.parameters())
