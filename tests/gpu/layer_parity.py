"""Layer-by-layer comparison of the kernel path against the PyTorch reference path (GPU).

Every layer runs twice on the same input and the same starting cache state (the reference
path's), so bf16 differences cannot compound across the 52 layers the way they do end to end
(near-tie expert choices flip and the flips grow). Used by the full-size GPU tests.
"""

from __future__ import annotations

import torch

from workers.model import ops
from workers.model.cache import ForwardBatch, HybridCache

NAMES = {"n": "rmsnorm", "M": "mamba", "*": "attention", "E": "moe"}


def token_cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)


@torch.no_grad()
def compare_layers(model, steps) -> tuple[dict[str, torch.Tensor], list[float]]:
    """steps: [(embeds [T, D] packed, new lens per sequence, context lens)], run in order on
    two sequences' slots -> (token cosines per layer kind, SSM-state relative errors)."""
    c = model.config
    n_seqs = len(steps[0][1])
    caches = [HybridCache(c, n_seqs, 1 << 15, 1 << 14, "cuda", torch.bfloat16) for _ in range(2)]
    ref_cache, fast_cache = caches
    slots = [ref_cache.alloc_slot() for _ in range(n_seqs)]
    assert [fast_cache.alloc_slot() for _ in range(n_seqs)] == slots
    cos = {kind: [] for kind in NAMES}
    state_err = []
    for embeds, lens, ctx in steps:
        for cc in caches:
            cc.reserve(slots, [x + n for x, n in zip(ctx, lens, strict=True)])
        batch = ForwardBatch.build(lens, slots, ctx, "cuda")
        hidden, residual = embeds, None
        for i, layer in enumerate(model.layers):
            kind, mixer = c.pattern[i], layer.mixer
            with ops.reference():
                normed, new_residual = layer.norm(hidden, residual)
            cos["n"].append(token_cos(layer.norm(hidden, residual)[0], normed))
            if kind == "M":
                j = mixer.cache_index
                fast_cache.conv_state[j].copy_(ref_cache.conv_state[j])
                fast_cache.ssm_state[j].copy_(ref_cache.ssm_state[j])
            with ops.reference():
                out = mixer(normed, batch, ref_cache)
            cos[kind].append(token_cos(mixer(normed, batch, fast_cache), out))
            if kind == "M":
                want = ref_cache.ssm_state[j][slots]
                got = fast_cache.ssm_state[j][slots]
                state_err.append(((got - want).norm() / want.norm()).item())
            hidden, residual = out, new_residual
    return {k: torch.cat(v) for k, v in cos.items()}, state_err


def assert_layers_match(cos: dict[str, torch.Tensor], state_err: list[float], label: str) -> None:
    """bf16 tolerance: mean token cosine > 0.999, at most 2 % of tokens below 0.99, SSM
    state within 5 %."""
    for kind, v in cos.items():
        print(
            f"{label} {NAMES[kind]:>9s}: mean token cosine {v.mean():.6f}, min {v.min():.5f}, "
            f"tokens below 0.99: {(v < 0.99).float().mean():.2%}"
        )
        assert v.mean() > 0.999, (label, kind)
        assert (v < 0.99).float().mean() <= 0.02, (label, kind)
    print(f"{label}     state: max relative error of the SSM state {max(state_err):.2e}")
    assert max(state_err) < 0.05, label
