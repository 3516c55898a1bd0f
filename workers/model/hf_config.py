"""Parse a checkpoint's `config.json` into our frozen model config dataclasses.

The published `config.json` is composite: `llm_config` (NemotronH keys), `vision_config`
(RADIO), `sound_config` (Parakeet) and top-level multimodal keys (docs/model.md §6.1). Anything we
cannot honour (a layer type we don't build, grouped routing, a quantisation scheme we don't
know, sizes that contradict each other) raises `CheckpointConfigError` naming the key.
Quantisation and the other JSON files are read in `checkpoint_info.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.model.config import AudioConfig, LLMConfig, OmniConfig, VisionConfig


class CheckpointConfigError(ValueError):
    """A config file of the checkpoint is missing, unreadable or describes something unsupported."""


# timm backbones RADIO's `args.model` names, for the sizes a config leaves out: _VIT_SIZES
_VIT_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads")
_VIT_TABLE = {
    "vit_huge_patch16_224": (1280, 32, 16),
    "vit_large_patch16_224": (1024, 24, 16),
    "vit_base_patch16_224": (768, 12, 12),
}
_ALIASES = {
    "text_config": "llm_config",
    "audio_config": "sound_config",
    "vision_hidden_size": "vit_hidden_size",
    "image_token_id": "img_context_token_id",
    "audio_token_id": "sound_context_token_id",
}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointConfigError(f"{path}: file missing") from e
    except json.JSONDecodeError as e:
        raise CheckpointConfigError(f"{path}: not valid JSON ({e})") from e


def _get(d: dict, key: str, where: str, default=None, required: bool = False):
    if key in d and d[key] is not None:
        return d[key]
    if required:
        raise CheckpointConfigError(f"{where}.{key} is missing")
    return default


_LAYER_TYPES = {"linear_attention": "M", "moe": "E", "full_attention": "*", "mlp": "-"}


def _pattern(d: dict, w: str) -> str:
    """`hybrid_override_pattern` (published) or `layers_block_type` (what transformers writes)."""
    if "hybrid_override_pattern" in d:
        return d["hybrid_override_pattern"]
    types = d.get("layers_block_type") or d.get("layer_types")
    if not types:
        raise CheckpointConfigError(f"{w}.hybrid_override_pattern is missing")
    try:
        return "".join(_LAYER_TYPES[t] for t in types)
    except KeyError as e:
        raise CheckpointConfigError(f"{w}.layers_block_type has unknown type {e}") from e


def parse_llm(d: dict) -> LLMConfig:
    w = "llm_config"
    pattern = _pattern(d, w)
    if bad := set(pattern) - set("ME*"):
        raise CheckpointConfigError(f"{w}: unsupported layer types {bad} in the pattern")
    n_layers = _get(d, "num_hidden_layers", w)
    if n_layers is not None and n_layers != len(pattern):
        raise CheckpointConfigError(
            f"{w}: the pattern has {len(pattern)} layers but num_hidden_layers={n_layers}"
        )
    for key, want in (("n_group", 1), ("topk_group", 1)):
        if _get(d, key, w, want) != want:
            raise CheckpointConfigError(f"{w}.{key}={d[key]}: only {want} is supported")
    if _get(d, "tie_word_embeddings", w, False):
        raise CheckpointConfigError(f"{w}.tie_word_embeddings=true: the model has an untied head")
    if _get(d, "moe_latent_size", w) is not None:
        raise CheckpointConfigError(f"{w}.moe_latent_size is set: latent MoE is not supported")
    if _get(d, "num_nextn_predict_layers", w, 0) > 0:
        # with MTP layers the vision tower gets a final LayerNorm
        # (`vision_projector.vision_final_layernorm.*`); our tower does not build one yet
        raise CheckpointConfigError(
            f"{w}.num_nextn_predict_layers > 0: MTP checkpoints (and their vision final norm) "
            "are not supported yet"
        )
    if _get(d, "n_shared_experts", w, 1) != 1:
        raise CheckpointConfigError(f"{w}.n_shared_experts={d['n_shared_experts']}: need 1")
    for key in ("mlp_hidden_act",):
        if _get(d, key, w, "relu2") != "relu2":
            raise CheckpointConfigError(f"{w}.{key}={d[key]}: only relu2 is supported")
    eos = _get(d, "eos_token_id", w, 11)
    cfg = LLMConfig(
        hidden_size=_get(d, "hidden_size", w, required=True),
        vocab_size=_get(d, "vocab_size", w, required=True),
        pattern=pattern,
        norm_eps=_get(d, "layer_norm_epsilon", w, 1e-5),
        mamba_num_heads=_get(d, "mamba_num_heads", w, required=True),
        mamba_head_dim=_get(d, "mamba_head_dim", w, required=True),
        n_groups=_get(d, "n_groups", w, _get(d, "mamba_n_groups", w, 8)),
        ssm_state_size=_get(d, "ssm_state_size", w, required=True),
        conv_kernel=_get(d, "conv_kernel", w, _get(d, "mamba_d_conv", w, 4)),
        chunk_size=_get(d, "chunk_size", w, _get(d, "mamba_chunk_size", w, 128)),
        num_attention_heads=_get(d, "num_attention_heads", w, required=True),
        num_key_value_heads=_get(d, "num_key_value_heads", w, required=True),
        head_dim=_get(d, "head_dim", w, required=True),
        n_routed_experts=_get(d, "n_routed_experts", w, required=True),
        num_experts_per_tok=_get(d, "num_experts_per_tok", w, required=True),
        moe_intermediate_size=_get(d, "moe_intermediate_size", w, required=True),
        shared_expert_intermediate_size=_get(
            d, "moe_shared_expert_intermediate_size", w, required=True
        ),
        routed_scaling_factor=float(_get(d, "routed_scaling_factor", w, 1.0)),
        norm_topk_prob=bool(_get(d, "norm_topk_prob", w, True)),
        bos_token_id=_get(d, "bos_token_id", w, 1),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        pad_token_id=_get(d, "pad_token_id", w, 0),
        max_position_embeddings=_get(d, "max_position_embeddings", w, 262144),
    )
    if cfg.mamba_num_heads % cfg.n_groups:
        raise CheckpointConfigError(f"{w}: mamba_num_heads not divisible by n_groups")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise CheckpointConfigError(f"{w}: num_attention_heads not divisible by KV heads")
    if cfg.num_experts_per_tok > cfg.n_routed_experts:
        raise CheckpointConfigError(f"{w}: num_experts_per_tok > n_routed_experts")
    return cfg


def _vit_sizes(d: dict, w: str) -> tuple[int, int, int, int]:
    """(width, depth, heads, mlp) as transformers reads them: the sizes the config gives win;
    the backbone named in `args.model` fills only those it leaves out; the MLP is
    `intermediate_size`, else `mlp_ratio` (4, as in every timm ViT) times the width."""
    sizes = {k: d[k] for k in _VIT_SIZES if d.get(k) is not None}
    if missing := [k for k in _VIT_SIZES if k not in sizes]:
        name = (d.get("args") or {}).get("model")
        if name not in _VIT_TABLE:
            which = f"args.model={name!r} is not a backbone we know" if name else "no args.model"
            raise CheckpointConfigError(
                f"{w}: {', '.join(missing)} missing and {which} to take them from "
                f"(known: {', '.join(_VIT_TABLE)})"
            )
        sizes = dict(zip(_VIT_SIZES, _VIT_TABLE[name], strict=True)) | sizes
    width = sizes["hidden_size"]
    mlp = int(width * _get(d, "mlp_ratio", w, 4.0))
    if d.get("intermediate_size") is not None:
        if d.get("mlp_ratio") is not None and d["intermediate_size"] != mlp:
            raise CheckpointConfigError(
                f"{w}.intermediate_size={d['intermediate_size']} but mlp_ratio gives {mlp}"
            )
        mlp = d["intermediate_size"]
    return width, sizes["num_hidden_layers"], sizes["num_attention_heads"], mlp


def parse_vision(d: dict, temporal_patch_size: int) -> VisionConfig:
    """RADIO: sizes from the config's keys, else from the timm backbone in `args.model`."""
    w = "vision_config"
    args = d.get("args") or {}
    width, depth, heads, mlp = _vit_sizes(d, w)
    patch = _get(d, "patch_size", w, 16)
    max_img = _get(d, "max_img_size", w, args.get("cpe_max_size", 2048))
    prefix = _get(d, "num_cls_tokens", w, 3) + _get(d, "num_registers", w, 7)
    if "num_cls_tokens" not in d and "register_multiple" in args:
        prefix = args["register_multiple"]
    vtp = _get(d, "video_temporal_patch_size", w, temporal_patch_size)
    if vtp != temporal_patch_size:
        raise CheckpointConfigError(
            f"{w}.video_temporal_patch_size={vtp} but the top level says {temporal_patch_size}"
        )
    if width % heads:
        raise CheckpointConfigError(f"{w}: hidden_size not divisible by num_attention_heads")
    return VisionConfig(
        hidden_size=width,
        num_layers=depth,
        num_heads=heads,
        mlp_size=mlp,
        patch_size=patch,
        num_prefix_tokens=prefix,
        pos_grid=max_img // patch,
        layer_norm_eps=_get(d, "layer_norm_eps", w, 1e-6),
        temporal_patch_size=temporal_patch_size,
    )


def parse_audio(d: dict) -> AudioConfig:
    w = "sound_config"
    for key in ("attention_bias", "scale_input"):
        if d.get(key):
            raise CheckpointConfigError(f"{w}.{key}=true is not supported")
    cfg = AudioConfig(
        hidden_size=_get(d, "hidden_size", w, required=True),
        num_layers=_get(d, "num_hidden_layers", w, required=True),
        num_heads=_get(d, "num_attention_heads", w, required=True),
        ffn_size=_get(d, "intermediate_size", w, required=True),
        conv_kernel=_get(d, "conv_kernel_size", w, 9),
        subsampling_factor=_get(d, "subsampling_factor", w, 8),
        subsampling_channels=_get(d, "subsampling_conv_channels", w, 256),
        num_mel_bins=_get(d, "num_mel_bins", w, 128),
        sampling_rate=_get(d, "sampling_rate", w, 16000),
    )
    if cfg.subsampling_factor != 8:
        raise CheckpointConfigError(f"{w}.subsampling_factor={cfg.subsampling_factor}: need 8")
    return cfg


def parse_omni(d: dict) -> OmniConfig:
    arch = d.get("architectures") or []
    if arch and not any("Omni" in a for a in arch):
        raise CheckpointConfigError(f"config.json architectures={arch}: not a Nemotron Omni model")
    # transformers writes its own names for some keys; the published files use the others
    d = {_ALIASES.get(k, k): v for k, v in d.items()}
    llm = parse_llm(_get(d, "llm_config", "config", required=True))
    tps = _get(d, "video_temporal_patch_size", "config", 2)
    vision = parse_vision(_get(d, "vision_config", "config", required=True), tps)
    sound = d.get("sound_config")
    audio = parse_audio(sound) if sound else None
    ratio = float(_get(d, "downsample_ratio", "config", 0.5))
    if ratio != 0.5:
        raise CheckpointConfigError(f"config.downsample_ratio={ratio}: only 0.5 is supported")
    if d.get("ps_version", "v2") != "v2":
        raise CheckpointConfigError(f"config.ps_version={d['ps_version']}: only v2 is supported")
    vit_hidden = _get(d, "vit_hidden_size", "config", vision.hidden_size)
    if vit_hidden != vision.hidden_size:
        raise CheckpointConfigError(
            f"config.vit_hidden_size={vit_hidden} but vision hidden_size={vision.hidden_size}"
        )
    q = float(_get(d, "video_pruning_rate", "config", 0.0))
    if not 0.0 <= q < 1.0:
        raise CheckpointConfigError(f"config.video_pruning_rate={q} outside [0, 1)")
    return OmniConfig(
        llm=llm,
        vision=vision,
        audio=audio,
        downsample_ratio=ratio,
        projector_hidden_size=_get(d, "projector_hidden_size", "config", required=True),
        sound_projection_hidden_size=(sound or {}).get("projection_hidden_size", 4096),
        video_pruning_rate=q,
        img_context_token_id=_get(d, "img_context_token_id", "config", 18),
        sound_context_token_id=_get(d, "sound_context_token_id", "config", 27),
    )
