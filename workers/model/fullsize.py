"""The real-size NemotronH with random weights, built straight on a device (no checkpoint).

Used by the benchmarks and the GPU tests. The model is first laid out on the meta device
(no memory, no default init), then materialised once on the target device in its final
dtype and filled in place, so a 31.6 B-parameter bf16 model never has an fp32 copy.

`python -m workers.model.fullsize` prints the parameter counts of the real config
(computed on the meta device; no GPU needed).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workers.model.config import LLMConfig, OmniConfig
from workers.model.nemotron_h import NemotronH
from workers.model.omni import OmniModel
from workers.model.projectors import RMSNorm


@torch.no_grad()
def init_random_(model: NemotronH, std: float = 0.02, seed: int = 0) -> None:
    """Fill every weight in place: N(0, std) matrices, unit norms, Mamba-style A, D, dt.

    A small std keeps activations finite in bf16 through all 52 layers (each RMSNorm
    resets the scale, each mixer adds O(1) to the residual).
    """
    c = model.config
    device = model.embeddings.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    heads = torch.arange(1, c.mamba_num_heads + 1, dtype=torch.float32, device=device)
    for name, t in model.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            t.copy_(torch.log(heads))
        elif leaf == "D" or name.endswith("norm.weight") or name == "norm_f.weight":
            t.fill_(1.0)
        elif leaf == "dt_bias":
            # softplus(dt_bias) log-uniform in [1e-3, 1e-1], as Mamba initialises it
            u = torch.rand(t.shape, generator=gen, device=device, dtype=torch.float32)
            dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            t.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif leaf in ("bias", "e_score_correction_bias"):
            t.zero_()
        else:
            t.normal_(0.0, std, generator=gen)


def build_fullsize(
    config: LLMConfig | None = None,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    std: float = 0.02,
    seed: int = 0,
) -> NemotronH:
    """The model of `config` (default: the real one) with random weights on `device`."""
    model = NemotronH(config or LLMConfig(), device="meta", dtype=dtype)
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
) -> OmniModel:
    """The whole Omni model (LLM, ViT, audio encoder, projectors), random, on `device`."""
    model = OmniModel(config or OmniConfig(), device="meta", dtype=dtype)
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
        elif parts[-1] in ("experts_up", "experts_down"):
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
