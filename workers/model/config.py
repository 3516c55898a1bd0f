"""Model configuration: frozen dataclasses, one per tower plus the composite.

Defaults are the published Nemotron 3 Nano Omni 30B-A3B values (docs/model.md).
The checkpoint's `config.json` is parsed once, by `workers.model.hf_config` when the loader
reads the checkpoint; nothing below the loader sees a dict or an HF config object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

PATTERN_30B = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"


@dataclass(frozen=True)
class LLMConfig:
    """NemotronH hybrid backbone (docs/model.md §1)."""

    hidden_size: int = 2688
    vocab_size: int = 131072
    pattern: str = PATTERN_30B
    norm_eps: float = 1e-5
    # Mamba-2
    mamba_num_heads: int = 64
    mamba_head_dim: int = 64
    n_groups: int = 8
    ssm_state_size: int = 128
    conv_kernel: int = 4
    chunk_size: int = 128
    # attention
    num_attention_heads: int = 32
    num_key_value_heads: int = 2
    head_dim: int = 128
    # MoE
    n_routed_experts: int = 128
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 1856
    shared_expert_intermediate_size: int = 3712
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    # tokens
    bos_token_id: int = 1
    eos_token_id: int = 11
    pad_token_id: int = 0
    max_position_embeddings: int = 262144

    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: x, B and C."""
        return self.d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def in_proj_dim(self) -> int:
        """in_proj output, split [z d_inner, xBC conv_dim, dt heads]."""
        return self.d_inner + self.conv_dim + self.mamba_num_heads

    @cached_property
    def mamba_layers(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.pattern) if c == "M")

    @cached_property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.pattern) if c == "*")


@dataclass(frozen=True)
class VisionConfig:
    """C-RADIOv4-H ViT-H/16 with the tubelet video embedder (docs/model.md §2, §3.2)."""

    hidden_size: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_size: int = 5120
    patch_size: int = 16
    num_prefix_tokens: int = 10
    pos_grid: int = 128  # cpe_max_size 2048 / patch 16
    layer_norm_eps: float = 1e-6
    temporal_patch_size: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size * self.patch_size


@dataclass(frozen=True)
class AudioConfig:
    """Parakeet FastConformer encoder (docs/model.md §4.2)."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 8
    ffn_size: int = 4096
    conv_kernel: int = 9
    subsampling_factor: int = 8
    subsampling_channels: int = 256
    num_mel_bins: int = 128
    sampling_rate: int = 16000
    layer_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class OmniConfig:
    """The composite model: towers, projectors, multimodal token ids (docs/model.md §2.5, §4.3,
    §5)."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig | None = field(default_factory=AudioConfig)
    downsample_ratio: float = 0.5
    projector_hidden_size: int = 20480
    sound_projection_hidden_size: int = 4096
    video_pruning_rate: float = 0.7
    img_context_token_id: int = 18
    sound_context_token_id: int = 27

    @property
    def vision_feature_size(self) -> int:
        """Channels after pixel shuffle: 4 neighbours of the ViT width."""
        return self.vision.hidden_size * int(round(1 / self.downsample_ratio)) ** 2
