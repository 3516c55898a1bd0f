"""The reference floor: transformers' NemotronH `generate` on W-video-sized LLM inputs.

The same LLM (our `LLMConfig`), random bf16 weights, fed `batch` prompts of a 1-minute
W-video clip's length (≈ 5.2 K tokens after EVS) stacked in one `generate`, 256 new tokens
each with EOS suppressed. The prompts are random token ids: 5.24's NemotronH refuses
`inputs_embeds` in `generate`, and the embedding lookup is the only work that differs.
transformers picks its PyTorch fallbacks for the Mamba mixers when mamba-ssm is absent, as
in the spec's baseline rows. transformers is imported lazily: the GPU machine only has it
when its wheel is carried there.
"""

from __future__ import annotations

import math
import time

import torch

from workers.model.config import LLMConfig

_LAYER_TYPES = {"M": "linear_attention", "E": "moe", "*": "full_attention"}


def hf_config(c: LLMConfig, **overrides):
    """transformers' `NemotronHConfig` of `c`; `overrides` are further NemotronHConfig keys."""
    from transformers import NemotronHConfig

    return NemotronHConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        layers_block_type=[_LAYER_TYPES[ch] for ch in c.pattern],
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        mamba_num_heads=c.mamba_num_heads,
        mamba_head_dim=c.mamba_head_dim,
        n_groups=c.n_groups,
        ssm_state_size=c.ssm_state_size,
        conv_kernel=c.conv_kernel,
        chunk_size=c.chunk_size,
        n_routed_experts=c.n_routed_experts,
        num_experts_per_tok=c.num_experts_per_tok,
        moe_intermediate_size=c.moe_intermediate_size,
        moe_shared_expert_intermediate_size=c.shared_expert_intermediate_size,
        routed_scaling_factor=c.routed_scaling_factor,
        norm_topk_prob=c.norm_topk_prob,
        layer_norm_epsilon=c.norm_eps,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        max_position_embeddings=c.max_position_embeddings,
        **overrides,
    )


@torch.no_grad()
def build_reference(c: LLMConfig, device: str, dtype: torch.dtype = torch.bfloat16):
    """NemotronHForCausalLM of `c` laid out on meta, materialised on `device`, filled like
    `fullsize.init_random_` (N(0, 0.02) matrices, unit norms, Mamba-style A, D, dt)."""
    from transformers import NemotronHForCausalLM

    with torch.device("meta"):
        model = NemotronHForCausalLM(hf_config(c)).to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    heads = torch.arange(1, c.mamba_num_heads + 1, dtype=torch.float32, device=device)
    for name, t in model.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            t.copy_(torch.log(heads))
        elif leaf == "D" or name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            t.fill_(1.0)
        elif leaf == "dt_bias":  # softplus(dt_bias) log-uniform in [1e-3, 1e-1]
            u = torch.rand(t.shape, generator=gen, device=device)
            dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            t.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif leaf in ("bias", "e_score_correction_bias"):
            t.zero_()
        else:
            t.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def reference_floor(
    c: LLMConfig, device: str, batch: int = 8, prompt_len: int = 5200, new_tokens: int = 256
) -> dict:
    """Time `generate` on `batch` prompts of `prompt_len` tokens: prefill alone
    (one new token), then the whole generation; each prompt stands for one 1-minute clip."""
    model = build_reference(c, device)
    ids = torch.randint(0, c.vocab_size, (batch, prompt_len), device=device)
    mask = torch.ones(batch, prompt_len, dtype=torch.long, device=device)

    def generate(n: int) -> tuple[float, int]:
        _sync(device)
        t = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
        )
        _sync(device)
        return time.perf_counter() - t, out.shape[1]

    generate(2)  # warm-up: kernels, allocator
    prefill_s, _ = generate(1)
    wall, produced = generate(new_tokens)
    decode_tokens = batch * (new_tokens - 1)
    return {
        "batch": batch,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "generated_per_sequence": produced,
        "wall_s": wall,
        "prefill_s": prefill_s,
        "prefill_tok_s": batch * prompt_len / prefill_s,
        "decode_tok_s": decode_tokens / max(wall - prefill_s, 1e-9),
        "video_hours_per_hour": batch * 60.0 / wall,
    }
