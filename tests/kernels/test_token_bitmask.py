"""Grammar token masks on logits: the Triton kernel against the PyTorch reference (interpreter on
CPU), and both against the bit layout written out by hand."""

import pytest
import torch

from kernels.token_bitmask import mask_logits, mask_logits_ref


def _case(B, V, W, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g)
    bits = torch.randint(-(2**31), 2**31 - 1, (len(rows), W), generator=g, dtype=torch.int64)
    return logits, bits.to(torch.int32), torch.tensor(rows, dtype=torch.int64)


@pytest.mark.parametrize(
    ("B", "V", "W", "rows"),
    [
        (3, 64, 2, [0, 2]),  # exact fit
        (5, 100, 4, [4, 1, 3]),  # V not a multiple of 32, rows out of order
        (2, 1500, 40, [1]),  # several blocks of the vocab
        (4, 300, 5, [0, 1, 2, 3]),  # the mask is narrower than V: the tail is disallowed
        (2, 37, 3, []),  # nothing masked
    ],
)
def test_kernel_matches_reference(B, V, W, rows):
    logits, bits, idx = _case(B, V, W, rows)
    got, ref = logits.clone(), logits.clone()
    mask_logits(got, bits, idx)
    mask_logits_ref(ref, bits, idx)
    assert torch.equal(got, ref)
    untouched = [b for b in range(B) if b not in rows]
    assert torch.equal(got[untouched], logits[untouched])


def test_bit_layout():
    """Bit j of word w allows token 32·w + j; the sign bit is token 31 of each word."""
    V = 70
    allowed = [0, 5, 31, 32, 63, 64, 69]
    bits = torch.zeros(1, 3, dtype=torch.int64)
    for t in allowed:
        bits[0, t // 32] |= 1 << (t % 32)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    for op in (mask_logits, mask_logits_ref):
        logits = torch.zeros(2, V)
        op(logits, bits, torch.tensor([1]))
        assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == allowed
        assert torch.isfinite(logits[0]).all()
