"""assert_close for the MoE and attention kernel tests (CPU, Triton interpreter)."""

import torch

TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2)}


def assert_close(name, actual, expected):
    """allclose with per-dtype tolerances; the failure names max and mean absolute diff.

    atol is relative to the largest |expected|: the interpreter truncates fp32 -> bf16
    instead of rounding, so bf16 errors scale with the magnitudes that were summed.
    """
    rtol, atol = TOLERANCE[expected.dtype]
    a, e = actual.float(), expected.float()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    diff = (a - e).abs()
    ok = diff <= atol * e.abs().max().clamp_min(1.0) + rtol * e.abs()
    assert ok.all(), (
        f"{name}: {int((~ok).sum())}/{ok.numel()} outside rtol={rtol} atol={atol}; "
        f"max diff {diff.max().item():.3e}, mean diff {diff.mean().item():.3e}"
    )
