"""What each stage of the engine holds on the GPU at its peak, in bytes, from the model's shapes.

Every cost below names the tensors alive at the stage's peak (the kernels' and modules'
allocations, read off their code), per unit of the stage's batch: a ViT token, a mel frame
of audio, a prefill token or sequence, a decode sequence, a sampled row. `memory_plan.py`
sizes the batch budgets from them; tests/gpu/test_memory_gpu.py runs each stage at known
sizes on the full-size model and checks that the measured peak stays under the formula and
not far below it.

Letters: s model dtype bytes, D LLM width, V vocab, d ViT width, m ViT MLP width,
E experts, k experts per token, I expert width, M MoE tile rows (moe_experts).
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels import moe_experts
from workers.model.cache import kv_row_bytes
from workers.model.config import LLMConfig, OmniConfig
from workers.model.vision import POS_BLOCK_VALUES, PROJECTOR_SHARE

F32 = 4
I64 = 8
# Encoder rows of one 30 s audio clip: 3000 mel frames, 8× subsampled (docs/model.md §4.4).
CLIP_FRAMES = 3000


@dataclass(frozen=True)
class StageCosts:
    """Bytes per unit of work of every stage (see the module docstring)."""

    vit_token: int  # one ViT token of a forward: pixels, embedding, a block's peak, projector
    vit_fixed: int  # per forward: the position embedding's fp32 blocks (vision.py)
    audio_frame: int  # one mel frame of a clip in an encoder forward
    encoded_row: int  # one encoder output row held until spliced (LLM width, EVS scores)
    prompt_row: int  # one prompt embedding row waiting for prefill
    prefill_token: int
    prefill_seq: int  # one sequence of a prefill forward (its SSM states in fp32)
    prefill_fixed: int  # MoE tiles' padding rows
    decode_seq: int  # one sequence of a decode forward (the CUDA graph pool holds it)
    decode_fixed: int
    sample_fixed: int  # a sampling call whatever its rows (see SAMPLE_FIXED_PER_VOCAB)
    sample_row: int  # one row of the LM head + sampling: [V] logits in fp32 and the sampler's
    slot: int  # one cache slot: conv + fp32 SSM state of every Mamba layer
    kv_row: int  # one cached token: K and V of every attention layer
    seq_row_index: int  # one position of a slot's row table (req_to_token, int32)

    @classmethod
    def of(cls, config: OmniConfig, itemsize: int, kv_itemsize: int | None = None) -> StageCosts:
        """itemsize: bytes of the activations' dtype; kv_itemsize: the KV pools' (1 for FP8 KV;
        default: itemsize)."""
        c, s = config.llm, itemsize
        return cls(
            vit_token=vit_token_bytes(config, s),
            vit_fixed=5 * POS_BLOCK_VALUES * F32,
            audio_frame=audio_frame_bytes(config, s),
            encoded_row=c.hidden_size * s + F32 + I64 + 1,  # + EVS score, sort order, mask
            prompt_row=c.hidden_size * s,
            prefill_token=prefill_token_bytes(c, s),
            prefill_seq=prefill_seq_bytes(c, s),
            prefill_fixed=_moe(c, s, 0),
            decode_seq=decode_seq_bytes(c, s),
            decode_fixed=_moe(c, s, 0, decode=True),
            sample_fixed=c.vocab_size * SAMPLE_FIXED_PER_VOCAB,
            sample_row=c.vocab_size * (s + SAMPLE_F32_COPIES * F32 + I64),
            slot=slot_bytes(c, s),
            kv_row=kv_row_bytes(c, kv_itemsize or s),
            seq_row_index=4,
        )

    def vit(self, tokens: int) -> int:
        return self.vit_fixed + tokens * self.vit_token

    def prefill(self, tokens: int, seqs: int) -> int:
        return self.prefill_fixed + tokens * self.prefill_token + seqs * self.prefill_seq

    def decode(self, seqs: int) -> int:
        return self.decode_fixed + seqs * self.decode_seq

    def sample(self, rows: int) -> int:
        return self.sample_fixed + rows * self.sample_row

    def sample_rows(self, nbytes: int) -> int:
        """Rows of one LM head + sampling call that fit in `nbytes` (at least one)."""
        return max(1, (nbytes - self.sample_fixed) // self.sample_row)


# The sampler's [V] fp32 temporaries at its peak (top-p): logits, scaled logits, sorted
# values, probabilities, the mask's fill and its scatter (+ the sort order in int64, the
# drop mask, and the LM head's bf16 output before it turned fp32).
SAMPLE_F32_COPIES = 7
# Beside the rows, per vocabulary entry: the top-p sort's scratch and the allocator's rounding
# of the [rows, V] blocks. tests/gpu/test_memory_gpu.py measured 208.8 MiB for 32 rows and
# 640 MiB for 128 (H100, 2026-12-06): 4.5 MiB a row and 65 MiB whatever the rows.
SAMPLE_FIXED_PER_VOCAB = 512  # 64 MiB at V = 131 072


def vit_token_bytes(config: OmniConfig, s: int) -> int:
    """Per token of one ViT forward (vision.encode_visual), at the peak of its phases."""
    v = config.vision
    d, m = v.hidden_size, v.mlp_size
    pixels = 2 * v.temporal_patch_size * v.patch_dim * s  # a tubelet patch, patchified copy
    # projection, its sum with the position embedding (and that, per patch of a sequence),
    # the sequence with its prefix, the pieces already embedded and their concatenation
    embed = pixels + 6 * d * s
    # the forward's input, a block's input, x after attention (or LN, qkv, SDPA out + lse,
    # proj), LN, fc1 and GELU
    attention = 8 * d * s + v.num_heads * F32
    mlp = (4 * d + 2 * m) * s
    # projector on 1/PROJECTOR_SHARE of the tokens at once, per row of 4 patches: RMSNorm's
    # output and two fp32 copies, linear1 with its ReLU and square; beside the forward's
    # features and their pixel-shuffled copy
    row = 4 * d * s + 2 * 4 * d * F32 + 3 * config.projector_hidden_size * s
    projector = 2 * d * s + row // (4 * PROJECTOR_SHARE)
    return max(embed, attention, mlp, projector)


def audio_frame_bytes(config: OmniConfig, s: int) -> int:
    """Per mel frame of a clip in one encoder forward: its features in the model dtype and
    stacked; the subsampling's first conv output and its ReLU ([channels, T/2, mel/2] each)
    dominate; the Conformer layers (their relative-position scores [H, L, 2L-1] twice) and
    the projector work on T/8 rows, counted on top."""
    a = config.audio
    if a is None:
        return 0
    first = a.subsampling_channels * (a.num_mel_bins // 2) // 2  # values per frame, stride 2×2
    conformer = (6 * a.hidden_size + 2 * a.ffn_size) * s // a.subsampling_factor
    rel_pos = 2 * a.num_heads * 2 * CLIP_FRAMES // a.subsampling_factor**2 * s
    return 2 * a.num_mel_bins * s + 2 * first * s + conformer + rel_pos


def prefill_token_bytes(c: LLMConfig, s: int) -> int:
    """Per token of a packed prefill forward, at its peak layer (Mamba or MoE)."""
    D, H, P, N = c.hidden_size, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size
    L = c.chunk_size
    # the packed embeddings, the previous mixer output, the old residual, the norm's two outputs
    stream = 5 * D * s
    mamba = (
        c.in_proj_dim * s  # in_proj output [z, xBC, dt]
        + c.conv_dim * s  # the conv's output (its contiguous input is gone by the scan)
        + (c.d_inner + 2 * c.n_groups * N + H) * s  # the scan's contiguous x, B, C, dt
        + c.d_inner * s  # scan output y
        + 2 * H * F32  # softplus(dt) and its cumulative sum, per chunk position
        + H * P * N * (F32 + s) // L  # chunk states (fp32) and entering states, per chunk
        + c.n_groups * L * s  # C·Bᵀ per chunk
    )
    moe = c.num_experts_per_tok * (F32 + 4) + _moe(c, s, 1) - _moe(c, s, 0)  # route, experts
    attention = 2 * (c.num_attention_heads + c.num_key_value_heads) * c.head_dim * s
    return stream + max(mamba, moe, attention + D * s + 6 * I64)


def prefill_seq_bytes(c: LLMConfig, s: int) -> int:
    """Per sequence of a prefill forward: its initial SSM state gathered from the slot, its
    final state, and one partial chunk's states (kernels/ssd_scan.py bounds chunks by
    T / L + B)."""
    state = c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size
    L = c.chunk_size
    chunk = state * (F32 + s) + c.n_groups * L**2 * s + 2 * c.mamba_num_heads * L * F32
    return 2 * state * F32 + chunk


def decode_seq_bytes(c: LLMConfig, s: int) -> int:
    """Per sequence of a decode forward: the residual stream and the peak layer's
    intermediates for one token, and the split-K attention partials (at most 16 splits)."""
    D = c.hidden_size
    mamba = c.in_proj_dim * s + 2 * c.conv_dim * s + 2 * c.d_inner * s
    moe = c.num_experts_per_tok * (F32 + 4) + _moe(c, s, 1, True) - _moe(c, s, 0, True)
    partials = 16 * c.num_attention_heads * (c.head_dim + 1) * F32
    return 5 * D * s + max(mamba, moe, partials)


def slot_bytes(c: LLMConfig, s: int) -> int:
    conv = c.conv_dim * (c.conv_kernel - 1) * s
    ssm = c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * F32
    return len(c.mamba_layers) * (conv + ssm)


def _moe(c: LLMConfig, s: int, tokens: int, decode: bool = False) -> int:
    return moe_experts.workspace_bytes(
        tokens, c.num_experts_per_tok, c.n_routed_experts, c.moe_intermediate_size,
        c.hidden_size, s, decode,
    )  # fmt: skip
