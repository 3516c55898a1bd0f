"""The real-size NemotronH with random weights, built straight on a device (no checkpoint).

Used by the benchmarks and the GPU tests. The model is first laid out on the meta device
(no memory, no default init), then materialised once on the target device in its final
dtype and filled in place, so a 31.6 B-parameter bf16 model never has an fp32 copy.

`precision="fp8"|"nvfp4"` builds the layout of NVIDIA's FP8 or NVFP4 checkpoint
(`QuantPlan.recipe`) from the same random weights: each layer is drawn in bf16 beside the
quantized model, quantized into it and freed, so the bf16 model is never whole on the device
(the peak is the quantized model plus one bf16 layer); then the static scales are calibrated
(calibrate.py). Every layer draws from its own generator, so `random_block` rebuilds the
bf16 original of any one layer alone (the GPU tests compare against it).

`python -m workers.model.fullsize` prints the parameter counts of the real config
(computed on the meta device; no GPU needed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
from torch import nn

from workers.model.calibrate import calibrate
from workers.model.config import LLMConfig, OmniConfig
from workers.model.linear import Linear
from workers.model.moe import ExpertStack
from workers.model.nemotron_h import Block, NemotronH
from workers.model.omni import OmniModel
from workers.model.projectors import RMSNorm
from workers.model.quant import BF16, QuantPlan


def _generator(device: torch.device, seed: int, part: int) -> torch.Generator:
    """Part 0: embeddings, final norm and head; part i + 1: layer i."""
    return torch.Generator(device=device).manual_seed(seed * 1009 + part)


@torch.no_grad()
def fill_random_(named: Iterable[tuple[str, torch.Tensor]], gen: torch.Generator, std: float):
    """Fill NemotronH tensors, by their names in the model or in a Block, in place: N(0, std)
    matrices, unit norms, Mamba-style A, D, dt.

    A small std keeps activations finite in bf16 through all 52 layers (each RMSNorm
    resets the scale, each mixer adds O(1) to the residual).
    """
    for name, t in named:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            t.copy_(torch.log(torch.arange(1, t.numel() + 1, dtype=torch.float32, device=t.device)))
        elif leaf == "D" or name.endswith(("norm.weight", "norm_f.weight")):
            t.fill_(1.0)
        elif leaf == "dt_bias":
            # softplus(dt_bias) log-uniform in [1e-3, 1e-1], as Mamba initialises it
            u = torch.rand(t.shape, generator=gen, device=t.device, dtype=torch.float32)
            dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            t.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif leaf in ("bias", "e_score_correction_bias"):
            t.zero_()
        else:
            t.normal_(0.0, std, generator=gen)


def random_block(
    config: LLMConfig,
    layer_idx: int,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    std: float = 0.02,
    seed: int = 0,
) -> Block:
    """Layer `layer_idx` of the random model, unquantized: the weights any precision's layer
    was made from."""
    block = Block(config, layer_idx, QuantPlan(), device="meta", dtype=dtype)
    block.to_empty(device=device)
    gen = _generator(torch.device(device), seed, layer_idx + 1)
    fill_random_(block.state_dict(keep_vars=True).items(), gen, std)
    return block.eval()


@torch.no_grad()
def quantize_from_(dst: nn.Module, src: nn.Module) -> None:
    """Fill `dst`, a quantized twin of `src`, from src's unquantized weights: quantized layers
    quantize them, the rest is copied. Scales that need activations are left to calibrate."""
    for name, mod in dst.named_modules():
        s = src.get_submodule(name)
        if isinstance(mod, Linear):
            mod.set_weight(s.weight)
        elif isinstance(mod, ExpertStack):
            for j in range(mod.weight.shape[0]):
                mod.set_weight(j, s.weight[j])
        else:
            own = itertools.chain(
                mod.named_parameters(recurse=False), mod.named_buffers(recurse=False)
            )
            for leaf, t in own:
                t.copy_(getattr(s, leaf))


@torch.no_grad()
def init_random_(model: NemotronH, std: float = 0.02, seed: int = 0) -> None:
    """Random weights for `model` in its plan's formats, scales calibrated."""
    device = model.embeddings.weight.device
    named = model.state_dict(keep_vars=True).items()
    outside = [(n, t) for n, t in named if not n.startswith("layers.")]
    fill_random_(outside, _generator(device, seed, 0), std)
    for i, block in enumerate(model.layers):
        if model.plan.precision == BF16:
            gen = _generator(device, seed, i + 1)
            fill_random_(block.state_dict(keep_vars=True).items(), gen, std)
        else:
            src = random_block(model.config, i, device, model.embeddings.weight.dtype, std, seed)
            quantize_from_(block, src)
            del src
    calibrate(model)


def build_fullsize(
    config: LLMConfig | None = None,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    std: float = 0.02,
    seed: int = 0,
    precision: str = BF16,
) -> NemotronH:
    """The model of `config` (default: the real one) with random weights on `device`, in the
    published layout of `precision` (bf16, fp8, nvfp4)."""
    config = config or LLMConfig()
    plan = QuantPlan.recipe(config, precision)
    model = NemotronH(config, device="meta", dtype=dtype, plan=plan)
    model.to_empty(device=device)
    init_random_(model, std=std, seed=seed)
    return model.eval()


@torch.no_grad()
def init_tower_random_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights for a vision or audio tower or a projector, in place.

    Matrices get std 1/√fan_in (unit gain, so activations neither vanish nor blow up
    through 32 ViT blocks), tables and prefix tokens std 0.02, norms gains near 1, biases 0,
    BatchNorm running statistics near (0, 1).
    """
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, device=device, dtype=torch.float32)

    for t in module.parameters():
        t.copy_(0.02 * noise(t))
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            m.weight.copy_(noise(m.weight) * (m.weight[0].numel() ** -0.5))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm | nn.BatchNorm1d | RMSNorm):
            m.weight.copy_(1 + 0.02 * noise(m.weight))
        if isinstance(m, nn.LayerNorm | nn.BatchNorm1d):
            m.bias.zero_()
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(0.02 * noise(m.running_mean))
            m.running_var.copy_(1 + 0.1 * noise(m.running_var).abs())
    return module.eval()


def build_fullsize_omni(
    config: OmniConfig | None = None,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    precision: str = BF16,
) -> OmniModel:
    """The whole Omni model (LLM, ViT, audio encoder, projectors), random, on `device`; the
    LLM in the published layout of `precision`, the towers unquantized as published."""
    config = config or OmniConfig()
    plan = QuantPlan.recipe(config.llm, precision)
    model = OmniModel(config, device="meta", dtype=dtype, plan=plan)
    model.to_empty(device=device)
    init_random_(model.llm, seed=seed)
    for i, tower in enumerate((model.vit, model.mlp1, model.sound_encoder, model.sound_projection)):
        if tower is not None:
            init_tower_random_(tower, seed=seed + 1 + i)
    return model.eval()


def parameter_counts(model: NemotronH) -> dict[str, int]:
    """Checkpoint tensor elements by part (docs/model.md §1.5); works on a meta-device model."""
    c = model.config
    counts = {"embeddings": 0, "lm_head": 0, "mamba": 0, "attention": 0, "routed_experts": 0}
    counts |= {"moe_other": 0, "norms": 0}
    kind_part = {"M": "mamba", "*": "attention", "E": "moe_other"}
    for name, t in model.state_dict().items():
        parts = name.split(".")
        if parts[0] in ("embeddings", "lm_head"):
            part = parts[0]
        elif parts[0] == "norm_f" or (parts[0] == "layers" and parts[2] == "norm"):
            part = "norms"
        elif parts[0] == "layers" and parts[3] == "experts":
            part = "routed_experts"
        else:
            part = kind_part[c.pattern[int(parts[1])]]
        counts[part] += t.numel()
    counts["total"] = sum(counts.values())
    return counts


def main() -> None:
    counts = parameter_counts(NemotronH(LLMConfig(), device="meta", dtype=torch.bfloat16))
    for part, n in counts.items():
        print(f"{part:>15s} {n:>15,d}  ({n / 1e9:.3f} B)")


if __name__ == "__main__":
    main()
