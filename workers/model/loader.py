"""Load a checkpoint directory in the published layout into an `OmniModel` (docs/model.md §6).

The model is laid out on the meta device, materialised once on the target device in its
final dtype, then filled tensor by tensor while the shards are read one at a time through
safetensors' memory map: the host never holds more than one tensor beyond the mapped file,
and there is never a second full copy of the weights.

Quantized checkpoints stay quantized (docs/model.md §6.4): each LLM linear's format is its
weight's dtype in the shard headers (E4M3: FP8, uint8: NVFP4), checked against the
checkpoint's ModelOpt config; the model is built with that `QuantPlan` and every tensor is
copied as published. FP8 KV scales (`k_proj.k_scale`, `v_proj.v_scale`) are 1.0 where the
config declares an FP8 KV cache but the files have none. `quantize="fp8"|"nvfp4"` turns a
BF16 checkpoint into the layout NVIDIA publishes at that precision (`QuantPlan.recipe`):
each weight is quantized on the device as it is read, then the static activation and KV
scales are calibrated (calibrate.py).

Published names map to our modules through `PREFIXES` (our parameters carry the published
names below each prefix); expert j's tensors go to slice j of their stack
(`moe.ExpertStack`). Any missing, unexpected, mis-shaped or unreadable tensor raises
`CheckpointError` naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from workers.model.calibrate import calibrate
from workers.model.checkpoint_info import CheckpointInfo, read_checkpoint_info
from workers.model.checkpoint_keys import LM, is_skipped
from workers.model.linear import Linear
from workers.model.moe import RoutedExperts, parse_expert_key
from workers.model.omni import OmniModel
from workers.model.quant import BF16, FP8, NVFP4, QuantPlan, linear_modules

PREFIXES = (
    ("language_model.backbone.", "llm."),
    ("language_model.lm_head.", "llm.lm_head."),
    ("vision_model.radio_model.", "vit."),
    ("mlp1.", "mlp1."),
    ("sound_encoder.encoder.", "sound_encoder."),
    ("sound_projection.", "sound_projection."),
)
_EXPERT = re.compile(r"(llm\.layers\.\d+\.mixer)\.(experts\.\d+\.\w+\.\w+)")
# ViT layer scales: C-RADIO has none, but transformers (and timm) may write identity ones.
_LAYER_SCALE = re.compile(
    r"vision_model\.radio_model\.model\.blocks\.\d+\.(layer_scale[12]\.lambda1|ls[12]\.gamma)"
)
_FORMAT_OF_DTYPE = {"F8_E4M3": FP8, "U8": NVFP4}
_QUANTIZED_DTYPES = (torch.float8_e4m3fn, torch.uint8)
_KV_SCALES = ("k_scale", "v_scale")
# What a BF16 checkpoint quantized at load lacks: quantization and calibration make them.
_DERIVED = ("weight_scale", "weight_scale_2", "input_scale", *_KV_SCALES)


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


def _by_file(names: dict[str, Path]) -> list[tuple[Path, list[str]]]:
    out: dict[Path, list[str]] = {}
    for n, f in names.items():
        out.setdefault(f, []).append(n)
    return sorted(out.items())


# --- which format each linear holds -----------------------------------------------------------


def _published_weight(module: str) -> str:
    """Our module name under `llm.` -> the published name of its (first) weight."""
    return LM + module + (".0.up_proj.weight" if module.endswith(".experts") else ".weight")


def _our_module(published: str) -> str | None:
    """A module named in a quantization config -> our LLM module name, or None."""
    for prefix in (LM, "backbone."):  # ModelOpt writes both spellings
        if published.startswith(prefix):
            return re.sub(r"\.experts\.\d+\.(up|down)_proj$", ".experts", published[len(prefix) :])
    return None


def stored_plan(info: CheckpointInfo, names: dict[str, Path]) -> QuantPlan:
    """The quantization the checkpoint's tensors hold, checked against its quant config."""
    wanted = {_published_weight(m): m for m in linear_modules(info.model.llm)}
    formats = {}
    for file, file_names in _by_file({n: names[n] for n in wanted if n in names}):
        with _open(file) as f:
            for n in file_names:
                if fmt := _FORMAT_OF_DTYPE.get(f.get_slice(n).get_dtype()):
                    formats[wanted[n]] = fmt
    plan = QuantPlan(formats, kv_fp8=bool(info.quant and info.quant.kv_cache_fp8))
    _check_config(plan, info)
    return plan


def _check_config(plan: QuantPlan, info: CheckpointInfo) -> None:
    quant, path = info.quant, info.path
    if quant is None:
        if plan.formats:
            module, fmt = next(iter(plan.formats.items()))
            raise CheckpointError(
                f"{path}: {_published_weight(module)} is {fmt} but the checkpoint has no "
                "quantization config (config.json quantization_config or hf_quant_config.json)"
            )
        return
    if plan.precision != quant.precision:
        raise CheckpointError(
            f"{path}: the quantization config says {quant.quant_algo} ({quant.precision}) but "
            f"the weights are {plan.precision}"
        )
    if not quant.layers:
        return
    ours = set(linear_modules(info.model.llm))
    for name, fmt in quant.layers.items():
        module = _our_module(name)
        if module not in ours:
            raise CheckpointError(f"{path}: quantized layer {name} is not supported quantized")
        if plan.format(module) != fmt:
            raise CheckpointError(
                f"{path}: the quantization config makes {name} {fmt}, its weight is "
                f"{plan.format(module)}"
            )
    listed = {_our_module(name) for name in quant.layers}
    for module, fmt in plan.formats.items():
        if module not in listed:
            raise CheckpointError(
                f"{path}: {_published_weight(module)} is {fmt} but the quantization config's "
                "quantized_layers does not list it"
            )


def _target_plan(stored: QuantPlan, quantize: str | None, info: CheckpointInfo) -> QuantPlan:
    if quantize is None or quantize == stored.precision:
        return stored
    if stored.precision != BF16:
        raise CheckpointError(
            f"{info.path}: quantize={quantize} converts BF16 checkpoints; this one is already "
            f"{stored.precision}"
        )
    return QuantPlan.recipe(info.model.llm, quantize)


# --- copying tensors in -----------------------------------------------------------------------


@torch.no_grad()
def load_weights(model: OmniModel, path: Path, quantizing: bool = False) -> None:
    """Fill every parameter and buffer of `model` from the shards under `path`; `quantizing`:
    the checkpoint is BF16 and the model's quantized layers quantize what they read."""
    names = shard_map(path)
    targets = {n: t for n, t in model.named_parameters()}
    targets |= {n: b for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")}
    expected = {n for n in targets if ".mixer.experts." not in n} | _expert_slots(model)
    kv_scales = {n for n in expected if n.endswith(_KV_SCALES)}
    if quantizing:
        expected = {n for n in expected if not n.endswith(_DERIVED)}
    loaded: set[str] = set()
    for file, file_names in _by_file(names):
        with _open(file) as f:
            for name in file_names:
                ours = _load_tensor(model, targets, f, name, file, quantizing)
                if ours is not None:
                    loaded.add(ours)
    missing = sorted(expected - loaded - kv_scales)
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:5]}"
        )
    for n in kv_scales - loaded:
        targets[n].fill_(1.0)  # ModelOpt's default where a checkpoint stores no KV scale


def _expert_slots(model: OmniModel) -> set[str]:
    """`…experts.{j}.{proj}.{leaf}` for every expert and every leaf of its stack's format."""
    out = set()
    for name, experts in model.named_modules():
        if isinstance(experts, RoutedExperts):
            for which in ("up_proj", "down_proj"):
                leaves = [n for n, _ in getattr(experts, which).named_parameters()]
                for j in range(experts.num_experts):
                    out |= {f"{name}.{j}.{which}.{leaf}" for leaf in leaves}
    return out


def _load_tensor(model, targets, handle, name: str, file: Path, quantizing: bool) -> str | None:
    """Copy one published tensor into the model -> our name, or None for a skipped one."""
    if is_skipped(name):
        return None
    if _LAYER_SCALE.fullmatch(name):
        if not torch.all(_get(handle, name, file) == 1):
            raise CheckpointError(f"{file.name}: {name} is not 1: layer scale is unsupported")
        return None
    ours = map_name(name)
    if ours is None:
        raise CheckpointError(f"{file.name}: unexpected tensor {name} (no module for it)")
    if ours.endswith(_KV_SCALES) and ours not in targets:
        return None  # KV scales of a checkpoint whose config declares no FP8 KV cache
    tensor = _get(handle, name, file)
    if ours.endswith(_DERIVED) and tensor.shape == (1,):
        tensor = tensor.reshape(())  # a per-tensor scale some exports store as [1]
    try:
        _assign(model, targets, ours, tensor, quantizing)
    except ValueError as e:
        raise CheckpointError(f"{file.name}: {name}: {e}") from e
    return ours


def _get(handle, name: str, file: Path) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file.name}: tensor {name} unreadable ({e})") from e


def _assign(model, targets, ours: str, tensor: torch.Tensor, quantizing: bool) -> None:
    if (m := _EXPERT.fullmatch(ours)) and (key := parse_expert_key(m.group(2))):
        experts = model.get_submodule(m.group(1) + ".experts")
        j, which, leaf = key
        if j >= experts.num_experts:
            raise ValueError(f"expert {j} beyond n_routed_experts={experts.num_experts}")
        stack = getattr(experts, which)
        if quantizing and leaf == "weight" and stack.fmt != BF16:
            stack.set_weight(j, tensor)
        else:
            stack.load(j, leaf, tensor)
        return
    target = targets.get(ours)
    if target is None:
        raise ValueError(f"unexpected tensor (no parameter {ours})")
    module_name, leaf = ours.rsplit(".", 1)
    module = model.get_submodule(module_name)
    if quantizing and leaf == "weight" and isinstance(module, Linear) and module.fmt != BF16:
        module.set_weight(tensor)
        return
    if target.shape != tensor.shape:
        raise ValueError(f"shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
    quantized = target.dtype in _QUANTIZED_DTYPES or tensor.dtype in _QUANTIZED_DTYPES
    if quantized and tensor.dtype != target.dtype:
        raise ValueError(f"dtype {tensor.dtype}, expected {target.dtype}")
    target.copy_(tensor)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
) -> tuple[OmniModel, CheckpointInfo]:
    """Read the config files, build the model on `device`, load the weights.

    dtype defaults to float32 on the CPU (the PyTorch reference path) and bfloat16 elsewhere;
    it is the dtype of everything the checkpoint holds unquantized. quantize: None (serve the
    checkpoint as it is), "fp8" or "nvfp4" (quantize a BF16 checkpoint at load).
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    stored = stored_plan(info, shard_map(path))
    plan = _target_plan(stored, quantize, info)
    try:
        model = OmniModel(info.model, device="meta", dtype=dtype, plan=plan)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    model.to_empty(device=device)
    load_weights(model, path, quantizing=plan is not stored)
    if plan is not stored:
        calibrate(model.llm)
    return model.eval(), info
