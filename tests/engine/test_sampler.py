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
