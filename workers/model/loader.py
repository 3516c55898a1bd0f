"""Load a checkpoint directory in the published layout into an `OmniModel` (docs/model.md §6).

The model is laid out on the meta device, materialised once on the target device in its
final dtype, then filled tensor by tensor while the shards are read one at a time through
safetensors' memory map: the host never holds more than one tensor beyond the mapped file,
and there is never a second full copy of the weights.

Published names map to our modules through `PREFIXES` (our parameters carry the published
names below each prefix); MoE experts are copied into their stacked tensors through
`MoE.load_expert`. Quantised linears (ModelOpt FP8 / NVFP4) are dequantised on the way in.
Any missing, unexpected, mis-shaped or unreadable tensor raises `CheckpointError` naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from workers.model.checkpoint_info import CheckpointInfo, read_checkpoint_info
from workers.model.checkpoint_keys import is_skipped
from workers.model.moe import MoE, parse_expert_key
from workers.model.omni import OmniModel
from workers.model.quant import dequantise, is_quantised

PREFIXES = (
    ("language_model.backbone.", "llm."),
    ("language_model.lm_head.", "llm.lm_head."),
    ("vision_model.radio_model.", "vit."),
    ("mlp1.", "mlp1."),
    ("sound_encoder.encoder.", "sound_encoder."),
    ("sound_projection.", "sound_projection."),
)
_QUANT_COMPANIONS = ("weight_scale", "weight_scale_2")
_EXPERT = re.compile(r"(llm\.layers\.\d+\.mixer)\.(experts\.\d+\.\w+\.weight)")
# ViT layer scales: C-RADIO has none, but transformers (and timm) may write identity ones.
_LAYER_SCALE = re.compile(
    r"vision_model\.radio_model\.model\.blocks\.\d+\.(layer_scale[12]\.lambda1|ls[12]\.gamma)"
)


class CheckpointError(RuntimeError):
    """The weight files do not match the config: names the file and/or tensor."""


def map_name(name: str) -> str | None:
    for src, dst in PREFIXES:
        if name.startswith(src):
            return dst + name[len(src) :]
    return None


def shard_map(path: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from the index or the single `model.safetensors`."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e})") from e
        files = {f: path / f for f in set(weight_map.values())}
        for f, p in files.items():
            if not p.exists():
                raise CheckpointError(f"{index} names shard {f}, which does not exist")
        return {n: files[f] for n, f in weight_map.items()}
    single = path / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{path}: no model.safetensors.index.json or model.safetensors")
    with _open(single) as f:
        return dict.fromkeys(f.keys(), single)


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file.name}: cannot read shard ({e})") from e


class _Shards:
    """Open shard handles on demand (scales of a quantised weight may sit in another shard)."""

    def __init__(self, names: dict[str, Path]):
        self.names = names
        self._open: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        file = self.names[name]
        if file not in self._open:
            self._open[file] = _open(file).__enter__()
        try:
            return self._open[file].get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file.name}: tensor {name} unreadable ({e})") from e

    @property
    def open_files(self) -> list[Path]:
        return list(self._open)

    def close(self, file: Path) -> None:
        handle = self._open.pop(file, None)
        if handle is not None:
            handle.__exit__(None, None, None)


@torch.no_grad()
def load_weights(model: OmniModel, path: Path, dtype: torch.dtype) -> None:
    """Fill every parameter and buffer of `model` from the shards under `path`."""
    names = shard_map(path)
    targets = {n: t for n, t in model.named_parameters()}
    targets |= {n: b for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")}
    expected = {n for n in targets if not n.endswith(("experts_up", "experts_down"))}
    expected |= _expert_slots(model)
    loaded: set[str] = set()
    shards = _Shards(names)
    by_file: dict[Path, list[str]] = {}
    for n, f in names.items():
        by_file.setdefault(f, []).append(n)
    try:
        for file, file_names in sorted(by_file.items()):
            for name in file_names:
                if (ours := _load_tensor(model, targets, shards, name, file, dtype)) is not None:
                    loaded.add(ours)
            shards.close(file)
    finally:
        for file in shards.open_files:
            shards.close(file)
    missing = sorted(expected - loaded)
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:5]}"
        )


def _load_tensor(model, targets, shards: _Shards, name: str, file: Path, dtype) -> str | None:
    """Copy one published tensor into the model -> our name, or None for a skipped one."""
    if is_skipped(name) or name.rsplit(".", 1)[-1] in _QUANT_COMPANIONS:
        return None
    if _LAYER_SCALE.fullmatch(name):
        if not torch.all(shards.get(name) == 1):
            raise CheckpointError(f"{file.name}: {name} is not 1: layer scale is unsupported")
        return None
    ours = map_name(name)
    if ours is None:
        raise CheckpointError(f"{file.name}: unexpected tensor {name} (no module for it)")
    tensor = shards.get(name)
    if is_quantised(tensor):
        tensor = _dequantise(name, tensor, shards, dtype)
    _assign(model, targets, ours, name, file, tensor)
    return ours


def _expert_slots(model: OmniModel) -> set[str]:
    out = set()
    for i, layer in enumerate(model.llm.layers):
        if isinstance(layer.mixer, MoE):
            for j in range(layer.mixer.experts_up.shape[0]):
                for which in ("up_proj", "down_proj"):
                    out.add(f"llm.layers.{i}.mixer.experts.{j}.{which}.weight")
    return out


def _dequantise(name: str, tensor: torch.Tensor, shards: _Shards, dtype) -> torch.Tensor:
    base = name.removesuffix("weight")
    companions = {c: shards.get(base + c) for c in _QUANT_COMPANIONS if base + c in shards.names}
    try:
        return dequantise(tensor, companions, dtype)
    except ValueError as e:
        raise CheckpointError(f"{name}: {e}") from e


def _assign(model, targets, ours: str, name: str, file: Path, tensor: torch.Tensor) -> None:
    if m := _EXPERT.fullmatch(ours):
        moe = model.get_submodule(m.group(1))
        j, which = parse_expert_key(m.group(2))
        if j >= moe.experts_up.shape[0]:
            raise CheckpointError(f"{file.name}: {name}: expert {j} beyond n_routed_experts")
        try:
            moe.load_expert(j, which, tensor)
        except ValueError as e:
            raise CheckpointError(f"{file.name}: {name}: {e}") from e
        return
    target = targets.get(ours)
    if target is None:
        raise CheckpointError(f"{file.name}: unexpected tensor {name} (no parameter {ours})")
    if target.shape != tensor.shape:
        raise CheckpointError(
            f"{file.name}: {name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
        )
    target.copy_(tensor)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[OmniModel, CheckpointInfo]:
    """Read the config files, build the model on `device`, load the weights.

    dtype defaults to float32 on the CPU (the PyTorch reference path) and bfloat16 elsewhere.
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = OmniModel(info.model, device="meta", dtype=dtype)
    model.to_empty(device=device)
    load_weights(model, path, dtype)
    return model.eval(), info
