"""Next-token sampling: greedy, temperature, top-k, top-p, per-request seeded generators.

Letters: B sequences, V vocab.

One decode step samples for every running sequence at once, so the rules are applied to the
whole [B, V] batch with per-row parameters: a handful of launches per step, not a handful per
sequence. The draw is an exponential race, argmax(p / E) with E ~ Exp(1), which picks token
i with probability p_i; seeded requests draw their row of E from their own generator.
"""

from __future__ import annotations

import torch

from workers.engine.request import SamplingParams

MAX_SEED = 2**63  # seeds are in [0, MAX_SEED): a signed 64-bit integer, as the API states


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.seed is None:
        return None
    if not 0 <= params.seed < MAX_SEED:
        raise ValueError(f"seed {params.seed} is outside [0, 2**63)")
    return torch.Generator(device=device).manual_seed(params.seed)


def _filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [B, V]; top_k [B] (V = no cut); top_p [B] -> logits outside the top-k and the
    nucleus set to -inf."""
    V = logits.shape[-1]
    if bool((top_k < V).any()):
        kth = logits.topk(int(top_k.max()), dim=-1).values.gather(1, (top_k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if bool((top_p < 1.0).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p[:, None]
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """logits [B,V] fp32 -> token ids [B] int64, one row per request's own parameters."""
    greedy = [p.temperature <= 0 or p.top_k == 1 for p in params]
    if all(greedy):
        return logits.argmax(-1)  # the common benchmark batch: one launch
    dev, V = logits.device, logits.shape[-1]
    temp = torch.tensor([max(p.temperature, 1e-6) for p in params], device=dev)
    top_k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=dev)
    top_p = torch.tensor([p.top_p for p in params], device=dev)
    probs = _filter(logits / temp[:, None], top_k, top_p).softmax(-1)
    race = torch.empty_like(probs).exponential_()
    for b, gen in enumerate(generators):
        if gen is not None:
            race[b].exponential_(generator=gen)
    out = (probs / race).argmax(-1)
    if any(greedy):
        rows = torch.tensor(greedy, device=dev)
        out = torch.where(rows, logits.argmax(-1), out)
    return out
