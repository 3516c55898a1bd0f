"""What a checkpoint directory says besides the model's architecture: quantisation
(`config.json`'s `quantization_config`), `preprocessor_config.json` and
`generation_config.json`, read together with the architecture into one `CheckpointInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.model.config import OmniConfig
from workers.model.hf_config import CheckpointConfigError, parse_omni, read_json

_QUANT_ALGOS = ("FP8", "NVFP4", "MIXED_PRECISION")


@dataclass(frozen=True)
class PreprocessConfig:
    """`preprocessor_config.json`: image/video resolution budgets and pixel normalisation."""

    patch_size: int = 16
    min_num_patches: int = 1024
    max_num_patches: int = 13312
    video_target_num_patches: int = 1024
    max_model_len: int = 16384
    norm_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    norm_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class GenerationDefaults:
    """`generation_config.json` (docs/model.md §5.3)."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 16384
    eos_token_ids: tuple[int, ...] = (2, 11)
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class QuantConfig:
    """ModelOpt `quantization_config`; per-layer details come from the tensor dtypes."""

    quant_algo: str
    kv_cache_fp8: bool = False


def parse_quant(d: dict) -> QuantConfig | None:
    q = d.get("quantization_config")
    if not q:
        return None
    if q.get("quant_method", "modelopt") != "modelopt":
        raise CheckpointConfigError(f"quantization_config.quant_method={q['quant_method']!r}")
    algo = q.get("quant_algo")
    if algo not in _QUANT_ALGOS:
        raise CheckpointConfigError(f"quantization_config.quant_algo={algo!r} is not supported")
    kv = q.get("kv_cache_quant_algo") or (q.get("kv_cache_scheme") or {}).get("type")
    return QuantConfig(quant_algo=algo, kv_cache_fp8=kv is not None)


def parse_preprocess(d: dict) -> PreprocessConfig:
    """The file's values, which must be the ones workers/media implements (the defaults):
    a checkpoint asking for another budget or normalisation is refused, not half-honoured."""
    p = PreprocessConfig()
    got = PreprocessConfig(
        patch_size=d.get("patch_size", p.patch_size),
        min_num_patches=d.get("min_num_patches", p.min_num_patches),
        max_num_patches=d.get("max_num_patches", p.max_num_patches),
        video_target_num_patches=d.get("video_target_num_patches", p.video_target_num_patches),
        max_model_len=d.get("max_model_len", p.max_model_len),
        norm_mean=tuple(d.get("norm_mean", p.norm_mean)),
        norm_std=tuple(d.get("norm_std", p.norm_std)),
    )
    for name, want in vars(p).items():
        if getattr(got, name) != want:
            raise CheckpointConfigError(
                f"preprocessor_config.json: {name}={getattr(got, name)!r}; the media pipeline "
                f"implements {want!r}"
            )
    return got


def parse_generation(d: dict) -> GenerationDefaults:
    g = GenerationDefaults()
    eos = d.get("eos_token_id", list(g.eos_token_ids))
    return GenerationDefaults(
        temperature=float(d.get("temperature", g.temperature)),
        top_p=float(d.get("top_p", g.top_p)),
        top_k=int(d.get("top_k") or 0),
        max_new_tokens=int(d.get("max_new_tokens", g.max_new_tokens)),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]),
        repetition_penalty=float(d.get("repetition_penalty", g.repetition_penalty)),
    )


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything the JSON files of one checkpoint directory say."""

    path: Path
    model: OmniConfig
    preprocess: PreprocessConfig
    generation: GenerationDefaults
    quant: QuantConfig | None


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    cfg = read_json(path / "config.json")
    pre = path / "preprocessor_config.json"
    gen = path / "generation_config.json"
    return CheckpointInfo(
        path=path,
        model=parse_omni(cfg),
        preprocess=parse_preprocess(read_json(pre)) if pre.exists() else PreprocessConfig(),
        generation=parse_generation(read_json(gen)) if gen.exists() else GenerationDefaults(),
        quant=parse_quant(cfg),
    )
