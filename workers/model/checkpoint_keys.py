"""The published tensor names and shapes of a checkpoint for a given config (docs/model.md §6.2,
§6.3).

One table, used to write the demo checkpoint and to check a checkpoint before loading it.
Names are the published ones; `SKIPPED` lists prefixes/suffixes present in published files
that inference does not use. A `QuantPlan` gives the quantized layouts (docs/model.md §6.4):
an FP8 linear adds `weight_scale` and `input_scale` (0-d), an NVFP4 one packs `weight` to
[N, K/2] and adds `weight_scale` [N, K/16], `weight_scale_2` and `input_scale`; an FP8 KV
cache adds `k_proj.k_scale` and `v_proj.v_scale`.
"""

from __future__ import annotations

from kernels.quant_formats import NVFP4_BLOCK
from workers.model.config import OmniConfig
from workers.model.quant import FP8, NVFP4, QuantPlan

LM = "language_model.backbone."
RADIO = "vision_model.radio_model."
SOUND = "sound_encoder.encoder."

# Buffers and heads the published files carry that inference never reads.
SKIPPED_PREFIXES = (
    RADIO + "input_conditioner.",
    RADIO + "summary_idxs",
    SOUND + "feature_extractor.",
    "mtp.",
    LM + "mtp.",
    "language_model.mtp.",
)
SKIPPED_SUFFIXES = ("num_batches_tracked",)


def is_skipped(name: str) -> bool:
    return name.startswith(SKIPPED_PREFIXES) or name.endswith(SKIPPED_SUFFIXES)


def linear_shapes(name: str, fmt: str, n: int, k: int) -> dict[str, tuple[int, ...]]:
    """The published tensors of one linear `name` [n, k] in format `fmt`."""
    if fmt == FP8:
        return {name + ".weight": (n, k), name + ".weight_scale": (), name + ".input_scale": ()}
    if fmt == NVFP4:
        return {
            name + ".weight": (n, k // 2),
            name + ".weight_scale": (n, k // NVFP4_BLOCK),
            name + ".weight_scale_2": (),
            name + ".input_scale": (),
        }
    return {name + ".weight": (n, k)}


def llm_shapes(cfg: OmniConfig, plan: QuantPlan | None = None) -> dict[str, tuple[int, ...]]:
    c = cfg.llm
    plan = plan or QuantPlan()
    d = c.hidden_size
    out: dict[str, tuple[int, ...]] = {LM + "embeddings.weight": (c.vocab_size, d)}
    for i, kind in enumerate(c.pattern):
        p = f"{LM}layers.{i}."
        out[p + "norm.weight"] = (d,)
        m = p + "mixer."

        def linear(name: str, n: int, k: int, i=i, m=m) -> dict[str, tuple[int, ...]]:
            return linear_shapes(m + name, plan.format(f"layers.{i}.mixer.{name}"), n, k)

        if kind == "M":
            h = c.mamba_num_heads
            out |= linear("in_proj", c.in_proj_dim, d)
            out |= {
                m + "conv1d.weight": (c.conv_dim, 1, c.conv_kernel),
                m + "conv1d.bias": (c.conv_dim,),
                m + "dt_bias": (h,),
                m + "A_log": (h,),
                m + "D": (h,),
                m + "norm.weight": (c.d_inner,),
            }
            out |= linear("out_proj", d, c.d_inner)
        elif kind == "*":
            q = c.num_attention_heads * c.head_dim
            kv = c.num_key_value_heads * c.head_dim
            out |= linear("q_proj", q, d) | linear("k_proj", kv, d) | linear("v_proj", kv, d)
            out |= linear("o_proj", d, q)
            if plan.kv_fp8:
                out |= {m + "k_proj.k_scale": (), m + "v_proj.v_scale": ()}
        else:
            e, i_, s = (
                c.n_routed_experts,
                c.moe_intermediate_size,
                c.shared_expert_intermediate_size,
            )
            out[m + "gate.weight"] = (e, d)
            out[m + "gate.e_score_correction_bias"] = (e,)
            fmt = plan.format(f"layers.{i}.mixer.experts")
            for j in range(e):
                out |= linear_shapes(f"{m}experts.{j}.up_proj", fmt, i_, d)
                out |= linear_shapes(f"{m}experts.{j}.down_proj", fmt, d, i_)
            out |= linear("shared_experts.up_proj", s, d) | linear("shared_experts.down_proj", d, s)
    out[LM + "norm_f.weight"] = (d,)
    out["language_model.lm_head.weight"] = (c.vocab_size, d)
    return out


def vision_shapes(cfg: OmniConfig) -> dict[str, tuple[int, ...]]:
    v = cfg.vision
    w = v.hidden_size
    g = RADIO + "model.patch_generator."
    out: dict[str, tuple[int, ...]] = {
        g + "embedder.weight": (w, v.patch_dim),
        g + "video_embedder.weight": (w, v.patch_dim * v.temporal_patch_size),
        g + "pos_embed": (1, v.pos_grid * v.pos_grid, w),
        g + "cls_token.token": (v.num_prefix_tokens, w),
    }
    for k in range(v.num_layers):
        b = f"{RADIO}model.blocks.{k}."
        out |= {
            b + "norm1.weight": (w,),
            b + "norm1.bias": (w,),
            b + "attn.qkv.weight": (3 * w, w),
            b + "attn.qkv.bias": (3 * w,),
            b + "attn.proj.weight": (w, w),
            b + "attn.proj.bias": (w,),
            b + "norm2.weight": (w,),
            b + "norm2.bias": (w,),
            b + "mlp.fc1.weight": (v.mlp_size, w),
            b + "mlp.fc1.bias": (v.mlp_size,),
            b + "mlp.fc2.weight": (w, v.mlp_size),
            b + "mlp.fc2.bias": (w,),
        }
    f = cfg.vision_feature_size
    out |= {
        "mlp1.0.weight": (f,),
        "mlp1.1.weight": (cfg.projector_hidden_size, f),
        "mlp1.3.weight": (cfg.llm.hidden_size, cfg.projector_hidden_size),
    }
    return out


def audio_shapes(cfg: OmniConfig) -> dict[str, tuple[int, ...]]:
    a = cfg.audio
    if a is None:
        return {}
    h, ch, f = a.hidden_size, a.subsampling_channels, a.ffn_size
    s = SOUND + "subsampling."
    out: dict[str, tuple[int, ...]] = {
        s + "layers.0.weight": (ch, 1, 3, 3),
        s + "layers.0.bias": (ch,),
        s + "layers.2.weight": (ch, 1, 3, 3),
        s + "layers.2.bias": (ch,),
        s + "layers.3.weight": (ch, ch, 1, 1),
        s + "layers.3.bias": (ch,),
        s + "layers.5.weight": (ch, 1, 3, 3),
        s + "layers.5.bias": (ch,),
        s + "layers.6.weight": (ch, ch, 1, 1),
        s + "layers.6.bias": (ch,),
        s + "linear.weight": (h, ch * (a.num_mel_bins // a.subsampling_factor)),
        s + "linear.bias": (h,),
    }
    for k in range(a.num_layers):
        p = f"{SOUND}layers.{k}."
        for ff in ("feed_forward1", "feed_forward2"):
            out[f"{p}{ff}.linear1.weight"] = (f, h)
            out[f"{p}{ff}.linear2.weight"] = (h, f)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "relative_k_proj"):
            out[f"{p}self_attn.{proj}.weight"] = (h, h)
        out[p + "self_attn.bias_u"] = (a.num_heads, a.head_dim)
        out[p + "self_attn.bias_v"] = (a.num_heads, a.head_dim)
        out[p + "conv.pointwise_conv1.weight"] = (2 * h, h, 1)
        out[p + "conv.depthwise_conv.weight"] = (h, 1, a.conv_kernel)
        out[p + "conv.pointwise_conv2.weight"] = (h, h, 1)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            out[f"{p}conv.norm.{stat}"] = (h,)
        for n in ("norm_feed_forward1", "norm_self_att", "norm_conv", "norm_feed_forward2"):
            out[f"{p}{n}.weight"] = (h,)
            out[f"{p}{n}.bias"] = (h,)
        out[p + "norm_out.weight"] = (h,)
        out[p + "norm_out.bias"] = (h,)
    ph = cfg.sound_projection_hidden_size
    out |= {
        "sound_projection.norm.weight": (h,),
        "sound_projection.linear1.weight": (ph, h),
        "sound_projection.linear2.weight": (cfg.llm.hidden_size, ph),
    }
    return out


def published_shapes(cfg: OmniConfig, plan: QuantPlan | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor inference needs, by published name."""
    return llm_shapes(cfg, plan) | vision_shapes(cfg) | audio_shapes(cfg)
