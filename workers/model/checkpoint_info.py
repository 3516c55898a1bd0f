"""What a checkpoint directory says besides the model's architecture: quantization
(`config.json`'s `quantization_config` or `hf_quant_config.json`), `preprocessor_config.json`
and `generation_config.json`, read together with the architecture into one `CheckpointInfo`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kernels.quant_formats import NVFP4_BLOCK
from workers.model.config import OmniConfig
from workers.model.hf_config import CheckpointConfigError, parse_omni, read_json
from workers.model.quant import FP8, NVFP4

# ModelOpt's quant_algo values we serve, and the format each gives a layer.
_ALGO_FORMATS = {"FP8": FP8, "NVFP4": NVFP4, "W4A16_NVFP4": NVFP4}
MIXED = "MIXED_PRECISION"


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
    """A ModelOpt quantization config: config.json's `quantization_config`, or the `quantization`
    of `hf_quant_config.json`. Which layers hold which format is read from the tensors
    (loader.py) and checked against `layers` where the config lists them."""

    quant_algo: str  # FP8 | NVFP4 | W4A16_NVFP4 | MIXED_PRECISION
    kv_cache_fp8: bool = False
    # MIXED_PRECISION's `quantized_layers`: published module name -> fp8 | nvfp4
    layers: Mapping[str, str] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """nvfp4 when any layer is NVFP4, else fp8."""
        if self.quant_algo == MIXED:
            return NVFP4 if NVFP4 in self.layers.values() else FP8
        return _ALGO_FORMATS[self.quant_algo]


def _algo(algo, where: str) -> str:
    algo = str(algo).upper()
    if algo not in _ALGO_FORMATS and algo != MIXED:
        raise CheckpointConfigError(f"{where}.quant_algo={algo!r} is not supported")
    return algo


def _group_size(entry: dict, algo: str, where: str) -> None:
    size = entry.get("group_size")
    if _ALGO_FORMATS.get(algo) == NVFP4 and size is not None and int(size) != NVFP4_BLOCK:
        raise CheckpointConfigError(f"{where}.group_size={size}: NVFP4 blocks are {NVFP4_BLOCK}")


def parse_quant(q: dict, where: str = "quantization_config") -> QuantConfig:
    """Either style of ModelOpt config: config.json's (`quant_method: modelopt`,
    `kv_cache_scheme` dict) or hf_quant_config.json's `quantization` (`kv_cache_quant_algo`)."""
    method = str(q.get("quant_method", "modelopt"))
    if not method.lower().startswith("modelopt"):
        raise CheckpointConfigError(f"{where}.quant_method={method!r}: only ModelOpt is supported")
    algo = _algo(q.get("quant_algo"), where)
    _group_size(q, algo, where)
    kv = q.get("kv_cache_quant_algo")
    scheme = q.get("kv_cache_scheme")
    if isinstance(scheme, dict) and scheme:
        kv = "FP8" if (scheme.get("type"), scheme.get("num_bits")) == ("float", 8) else scheme
    if kv is not None and str(kv).upper() != "FP8":
        raise CheckpointConfigError(f"{where}: KV cache quantization {kv!r} is not supported")
    layers = {}
    for name, entry in (q.get("quantized_layers") or {}).items():
        layer_algo = _algo(entry.get("quant_algo"), f"{where}.quantized_layers.{name}")
        if layer_algo == MIXED:
            raise CheckpointConfigError(f"{where}.quantized_layers.{name}: {MIXED} per layer")
        _group_size(entry, layer_algo, f"{where}.quantized_layers.{name}")
        layers[name] = _ALGO_FORMATS[layer_algo]
    if algo == MIXED and not layers:
        raise CheckpointConfigError(f"{where}: {MIXED} without quantized_layers")
    return QuantConfig(quant_algo=algo, kv_cache_fp8=kv is not None, layers=layers)


def read_quant(path: Path, config: dict) -> QuantConfig | None:
    """config.json's `quantization_config`, else `hf_quant_config.json` (older ModelOpt
    exports), else None: an unquantized checkpoint."""
    if q := config.get("quantization_config"):
        return parse_quant(q)
    legacy = path / "hf_quant_config.json"
    if legacy.exists():
        return parse_quant(read_json(legacy).get("quantization") or {}, legacy.name)
    return None


def quant_config_dict(formats: Mapping[str, str], kv_fp8: bool) -> dict:
    """config.json's `quantization_config` for a checkpoint whose quantized modules (published
    names) hold `formats`: FP8 alone as ModelOpt writes it, NVFP4 as MIXED_PRECISION."""
    out: dict = {"quant_method": "modelopt", "producer": {"name": "omnibatch"}}
    if NVFP4 in formats.values():
        out["quant_algo"] = MIXED
        out["quantized_layers"] = {
            name: {"quant_algo": "NVFP4", "group_size": NVFP4_BLOCK}
            if fmt == NVFP4
            else {"quant_algo": "FP8"}
            for name, fmt in formats.items()
        }
    else:
        out["quant_algo"] = "FP8"
    if kv_fp8:
        out["kv_cache_scheme"] = {"type": "float", "num_bits": 8, "dynamic": False}
    return out


def parse_preprocess(d: dict) -> PreprocessConfig:
    """The file's values, which must be the ones media/ implements (the defaults):
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
        quant=read_quant(path, cfg),
    )
