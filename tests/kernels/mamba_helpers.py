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


def column_slices(rows, widths, dtype, generator):
    """Views of one random [rows, sum(widths)] tensor split by columns, as Mamba2Mixer splits
    in_proj's output: each view has row stride sum(widths) and column stride 1."""
    wide = torch.randn(rows, sum(widths), generator=generator).to(dtype)
    return wide.split(widths, dim=-1)
