"""Write a model in the published checkpoint layout (docs/model.md §6), the loader's inverse.

Used to write the demo checkpoint, in the FP8 and NVFP4 layouts too, and by the test that
quantizing at load gives exactly the tensors a published checkpoint holds (load → save →
load). Quantized layers are written as ModelOpt exports them, with the matching
`quantization_config` in config.json (checkpoint_info.quant_config_dict).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from workers.model.checkpoint_info import quant_config_dict
from workers.model.checkpoint_keys import LM
from workers.model.loader import PREFIXES
from workers.model.omni import OmniModel

_STACK = re.compile(r"(llm\.layers\.\d+\.mixer\.experts)\.(up_proj|down_proj)\.(\w+)")


def _published_name(ours: str) -> str:
    for src, dst in sorted(PREFIXES, key=lambda p: -len(p[1])):
        if ours.startswith(dst):
            return src + ours[len(dst) :]
    raise ValueError(f"{ours}: no published prefix")


def published_tensors(model: OmniModel) -> dict[str, torch.Tensor]:
    """Our state dict under the published names, the expert stacks split per expert."""
    out = {}
    for ours, t in model.state_dict().items():
        if ours.endswith("num_batches_tracked"):
            continue
        if m := _STACK.fullmatch(ours):
            base = _published_name(m.group(1))
            for j in range(t.shape[0]):  # clone: safetensors refuses tensors sharing storage
                out[f"{base}.{j}.{m.group(2)}.{m.group(3)}"] = t[j].clone()
        else:
            out[_published_name(ours)] = t
    return out


def published_formats(model: OmniModel) -> dict[str, str]:
    """Published module name -> format, for every quantized module of the LLM."""
    out = {}
    for module, fmt in model.llm.plan.formats.items():
        if module.endswith(".experts"):
            for j in range(model.config.llm.n_routed_experts):
                for which in ("up_proj", "down_proj"):
                    out[f"{LM}{module}.{j}.{which}"] = fmt
        else:
            out[LM + module] = fmt
    return out


def write_shards(out: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    """model-0000k-of-0000n.safetensors + model.safetensors.index.json, split by bytes."""
    names = list(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    per = total / num_shards
    groups: list[list[str]] = [[] for _ in range(num_shards)]
    acc = 0
    for n in names:
        groups[min(int(acc // per), num_shards - 1)].append(n)
        acc += tensors[n].numel() * tensors[n].element_size()
    weight_map = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, out / fname, {"format": "pt"})
        weight_map |= dict.fromkeys(group, fname)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_weights(
    model: OmniModel,
    out: Path,
    num_shards: int = 2,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace the weights of the checkpoint directory `out` (its config.json must exist) by
    `model`'s, plus `extra` tensors, and set config.json's quantization_config to match."""
    out = Path(out)
    index = out / "model.safetensors.index.json"
    if index.exists():
        for f in set(json.loads(index.read_text())["weight_map"].values()):
            (out / f).unlink(missing_ok=True)
    write_shards(out, published_tensors(model) | (extra or {}), num_shards)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    formats = published_formats(model)
    if formats:
        config["quantization_config"] = quant_config_dict(formats, model.llm.plan.kv_fp8)
    (out / "config.json").write_text(json.dumps(config, indent=2))
