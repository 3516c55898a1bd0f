"""EVS: the Triton dissimilarity + selection against the PyTorch reference (interpreter on CPU)."""

import pytest
import torch

from kernels.evs import _evs_launch, evs_dissimilarity_ref, evs_keep_mask, evs_keep_mask_ref


def _emb(n, r, c, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, r, c, d, generator=g)
    # static background plus per-tubelet changes of varied size, like real video embeddings
    scale = torch.rand(n, r, c, 1, generator=g)
    return (base + scale * torch.randn(n, r, c, d, generator=g)).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
@pytest.mark.parametrize("shape", [(5, 3, 4, 40), (2, 6, 2, 300), (1, 4, 4, 16), (4, 2, 7, 33)])
def test_dissimilarity_matches_ref(shape, dtype, tol):
    emb = _emb(*shape, dtype)
    got, ref = _evs_launch(emb), evs_dissimilarity_ref(emb)
    assert got.shape == shape[:3]
    assert torch.all(got[0] == 255)
    diff = (got - ref).abs()
    assert diff.max() <= tol, f"max {diff.max():.3g} mean {diff.mean():.3g}"


@pytest.mark.parametrize("q", [0.0, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("shape", [(5, 3, 4, 40), (7, 2, 5, 24), (1, 4, 4, 16)])
def test_mask_matches_ref(shape, q):
    emb = _emb(*shape, torch.float32, seed=1)
    got, ref = evs_keep_mask(emb, q), evs_keep_mask_ref(emb, q)
    assert got.dtype == torch.bool and torch.equal(got, ref)
    n, r, c, _ = shape
    assert int(got.sum()) == max(r * c, int(n * r * c * (1 - q)))
    assert got[0].all()  # the first tubelet is always kept whole
    if q == 0.0:
        assert got.all()


def test_most_changed_tokens_are_kept():
    emb = torch.ones(3, 2, 2, 8)
    emb[2, 1, 0] = -1.0  # the only token that changes
    mask = evs_keep_mask(
        emb, 0.5
    )  # keeps 6 of 12: tubelet 0, the changed token, then the earliest tie
    assert mask[0].all() and mask[2, 1, 0] and mask[1, 0, 0] and int(mask.sum()) == 6
    assert torch.equal(
        evs_keep_mask(emb, 0.9), evs_keep_mask(emb, 0.0) & (torch.arange(3) == 0).view(3, 1, 1)
    )
