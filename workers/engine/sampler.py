"""Next-token sampling: greedy, temperature, top-k, top-p, per-request seeded generators.

Letters: B sequences, V vocab.
"""

from __future__ import annotations

import torch

from workers.engine.request import SamplingParams


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits [V] -> [V] with everything outside the top-k / nucleus set to -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """logits [B,V] fp32 -> token ids [B] int64, one row per request's own parameters."""
    if all(p.temperature <= 0 or p.top_k == 1 for p in params):
        return logits.argmax(-1)  # the common batch: one launch, not one per row
    out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    for b, (p, gen) in enumerate(zip(params, generators, strict=True)):
        row = logits[b]
        if p.temperature <= 0 or p.top_k == 1:
            out[b] = row.argmax()
            continue
        row = _filter(row / p.temperature, p.top_k, p.top_p)
        out[b] = torch.multinomial(row.softmax(-1), 1, generator=gen)[0]
    return out
