"""A tiny random-weight checkpoint in the published layout (`omnibatch demo-checkpoint DIR`).

Same files as the real repos (docs/model.md §6.1): composite config.json with the published key
names, preprocessor/generation configs, tokenizer files, chat template, ≥ 2 safetensors
shards and their index. Deterministic from the seed. Its text output is meaningless.
`precision="fp8"|"nvfp4"` writes the layout of NVIDIA's FP8 or NVFP4 repo instead: the same
random weights quantized at load (loader.py), saved as ModelOpt exports them (save.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from workers.model.checkpoint_keys import RADIO, SOUND, published_shapes
from workers.model.demo_tokenizer import write_tokenizer_files
from workers.model.hf_config import parse_omni
from workers.model.loader import load_model
from workers.model.quant import BF16
from workers.model.save import save_weights, write_shards

DEMO_NAME = "demo-random"
DEMO_VERSION = 2  # bump when the files change, so cached copies are rebuilt
VOCAB_SIZE = 512


def demo_config_dict(video_pruning_rate: float = 0.5) -> dict:
    """The composite config.json of the demo model (published key names, tiny sizes)."""
    llm = {
        "model_type": "nemotron_h",
        "architectures": ["NemotronHForCausalLM"],
        "hybrid_override_pattern": "MEM*EME",
        "num_hidden_layers": 7,
        "hidden_size": 64,
        "vocab_size": VOCAB_SIZE,
        "tie_word_embeddings": False,
        "layer_norm_epsilon": 1e-5,
        "residual_in_fp32": False,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "n_groups": 2,
        "ssm_state_size": 16,
        "conv_kernel": 4,
        "chunk_size": 16,  # the Triton SSD scan needs a power of two >= 16
        "expand": 2,
        "use_conv_bias": True,
        "mamba_hidden_act": "silu",
        "time_step_limit": [0.0, 1e30],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "attention_bias": False,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 48,
        "intermediate_size": 32,
        "n_shared_experts": 1,
        "n_group": 1,
        "topk_group": 1,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "mlp_hidden_act": "relu2",
        "num_nextn_predict_layers": 0,
        "bos_token_id": 1,
        "eos_token_id": 11,
        "pad_token_id": 0,
        "max_position_embeddings": 8192,
        "rope_theta": 10000,
    }
    vision = {
        "model_type": "radio",
        "version": "c-radio_v4-h",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-6,
        "patch_size": 16,
        "max_img_size": 256,
        "num_cls_tokens": 4,
        "num_registers": 6,
        "video_temporal_patch_size": 2,
        "args": {
            "cpe_max_size": 256,
            "register_multiple": 10,
            "min_num_patches": 1024,
            "max_num_patches": 13312,
            "teachers": [{"name": n} for n in ("clip", "siglip", "dino_v2", "sam")],
        },
    }
    sound = {
        "model_type": "parakeet",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_act": "silu",
        "conv_kernel_size": 9,
        "convolution_bias": False,
        "subsampling_factor": 8,
        "subsampling_conv_channels": 8,
        "subsampling_conv_kernel_size": 3,
        "subsampling_conv_stride": 2,
        "num_mel_bins": 128,
        "projection_hidden_size": 64,
        "projection_bias": False,
        "sampling_rate": 16000,
    }
    return {
        "architectures": ["NemotronH_Nano_Omni_Reasoning_V3"],
        "model_type": "NemotronH_Nano_Omni_Reasoning_V3",
        "llm_config": llm,
        "vision_config": vision,
        "sound_config": sound,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "force_image_size": 512,
        "projector_hidden_size": 128,
        "vit_hidden_size": 32,
        "img_context_token_id": 18,
        "sound_context_token_id": 27,
        "video_pruning_rate": video_pruning_rate,
        "video_temporal_patch_size": 2,
        "max_sequence_length": 8192,
    }


PREPROCESSOR = {
    "processor_class": "NemotronH_Nano_Omni_Reasoning_V3Processor",
    "patch_size": 16,
    "downsample_ratio": 0.5,
    "min_num_patches": 1024,
    "max_num_patches": 13312,
    "video_target_num_patches": 1024,
    "max_model_len": 16384,
    "norm_mean": [0.48145466, 0.4578275, 0.40821073],
    "norm_std": [0.26862954, 0.26130258, 0.27577711],
    "sampling_rate": 16000,
}
GENERATION = {
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.95,
    "max_new_tokens": 16384,
    "eos_token_id": [2, 11],
    "bos_token_id": 1,
    "pad_token_id": 0,
    "repetition_penalty": 1.0,
}


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random values with the scale each parameter kind has in a trained model."""
    rand = lambda: torch.randn(shape, generator=gen)
    unif = lambda lo, hi: lo + (hi - lo) * torch.rand(shape, generator=gen)
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_f.weight")) or (
        ".norm_" in name and name.endswith(".weight")
    ):
        return 1.0 + 0.1 * rand()
    if name.endswith("mlp1.0.weight"):
        return 1.0 + 0.1 * rand()
    if name.endswith("A_log"):
        return torch.log(unif(1.0, 8.0))
    if name.endswith("dt_bias"):  # keeps softplus(dt) well above the reference's 1e-3 clamp
        return unif(-0.5, 0.5)
    if name.endswith(".D"):
        return unif(0.5, 1.5)
    if name.endswith("running_var"):
        return unif(0.5, 1.5)
    if name.endswith(("bias", "running_mean", "bias_u", "bias_v", "e_score_correction_bias")):
        return 0.1 * rand()
    if name.endswith(("pos_embed", "cls_token.token")) or "embeddings.weight" in name:
        return rand()
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return rand() / math.sqrt(fan_in)


def _extra_buffers() -> dict[str, torch.Tensor]:
    """Published tensors that inference skips, written so the loader proves it skips them."""
    return {
        RADIO + "input_conditioner.norm_mean": torch.tensor(PREPROCESSOR["norm_mean"]).view(
            3, 1, 1
        ),
        RADIO + "input_conditioner.norm_std": torch.tensor(PREPROCESSOR["norm_std"]).view(3, 1, 1),
        RADIO + "summary_idxs": torch.tensor([0, 1]),
        SOUND + "feature_extractor.featurizer.window": torch.hann_window(400, periodic=False),
        SOUND + "feature_extractor.featurizer.fb": torch.zeros(1, 128, 257),
    }


def make_demo_tensors(config: dict, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = published_shapes(parse_omni(config))
    out = {}
    for name, shape in shapes.items():
        t = _init(name, shape, gen)
        # router bias and Mamba scalars stay fp32 in the published files
        keep32 = name.endswith(("e_score_correction_bias", "A_log", "dt_bias", ".D"))
        out[name] = t.to(torch.float32 if keep32 else dtype)
    return out | _extra_buffers()


def write_demo_checkpoint(
    out: str | Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    num_shards: int = 2,
    video_pruning_rate: float = 0.5,
    precision: str = BF16,
) -> Path:
    """Write the demo checkpoint into `out` (created if needed) and return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config_dict(video_pruning_rate)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (out / "generation_config.json").write_text(json.dumps(GENERATION, indent=2))
    write_tokenizer_files(out, VOCAB_SIZE, seed)
    write_shards(out, make_demo_tensors(config, seed, dtype), num_shards)
    if precision != BF16:
        model, _ = load_model(out, "cpu", dtype, quantize=precision)
        save_weights(model, out, num_shards, extra=_extra_buffers())
    return out
