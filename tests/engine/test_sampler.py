"""Sampling rules: greedy, top-k, top-p, temperature and seeded reproducibility."""

from __future__ import annotations

import torch

from workers.engine.request import SamplingParams
from workers.engine.sampler import make_generator, sample


def _draw(logits: torch.Tensor, p: SamplingParams, n: int) -> set[int]:
    gen = make_generator(p, torch.device("cpu"))
    return {int(sample(logits[None], [p], [gen])[0]) for _ in range(n)}


def test_greedy_and_top_k_one_pick_the_argmax():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1)] * 2
    out = sample(logits[[0, 1, 2, 0]], params, [None] * 4)
    assert out.tolist() == logits[[0, 1, 2, 0]].argmax(-1).tolist()


def test_top_k_limits_the_choices():
    logits = torch.linspace(0, 1, 20)
    got = _draw(logits, SamplingParams(temperature=5.0, top_k=3, seed=1), 200)
    assert got == {17, 18, 19}


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    got = _draw(logits, SamplingParams(temperature=1.0, top_p=0.7, seed=2), 300)
    assert got == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it: the third token is cut


def test_seed_reproduces_and_temperature_spreads():
    logits = torch.zeros(100)
    a = _draw(logits, SamplingParams(temperature=1.0, seed=7), 1)
    b = _draw(logits, SamplingParams(temperature=1.0, seed=7), 1)
    assert a == b
    assert len(_draw(logits, SamplingParams(temperature=1.0, seed=3), 100)) > 20


def test_a_seeded_row_draws_the_same_alone_or_in_any_batch():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 64, generator=g)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=11)
    alone = sample(logits[2:3], [seeded], [make_generator(seeded, torch.device("cpu"))])
    others = [SamplingParams(temperature=0), SamplingParams(temperature=1.5, top_k=5)]
    params = [others[0], others[1], seeded, others[1], others[0]]
    gens = [None, None, make_generator(seeded, torch.device("cpu")), None, None]
    batch = sample(logits, params, gens)
    assert batch[2] == alone[0]
    assert batch[0] == logits[0].argmax() and batch[4] == logits[4].argmax()
    assert batch[1] in logits[1].topk(5).indices and batch[3] in logits[3].topk(5).indices


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    p = SamplingParams(temperature=1.0, seed=5)
    gen = make_generator(p, torch.device("cpu"))
    rows = probs.log().expand(4000, 3)
    picks = sample(rows, [p] * 4000, [gen] * 4000)
    freq = torch.bincount(picks, minlength=3) / 4000
    assert (freq - probs).abs().max() < 0.03, freq
