"""The one comparison helper of the Mamba-2 and norm kernel tests."""

import torch

TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (3e-2, 3e-2)}


def assert_close(name, actual, expected, dtype):
    """Per-dtype allclose; the message carries max and mean absolute difference."""
    rtol, atol = TOL[dtype]
    a, e = actual.float(), expected.float()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{bad.numel()} off; max diff {diff.max().item():.3e}, "
        f"mean diff {diff.mean().item():.3e}"
    )
