"""SSM decode step: Triton (interpreted) vs torch reference, and vs the scan it continues."""

import pytest
import torch
import torch.nn.functional as F

from kernels.ssd_scan import ssd_scan_ref
from kernels.ssm_state_update import ssm_state_update, ssm_state_update_ref
from tests.kernels.mamba_helpers import assert_close, column_slices

H, P, G, N = 4, 16, 2, 16


def make_inputs(batch, slots_total, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(slots_total, H, P, N, generator=g)
    x = torch.randn(batch, H, P, generator=g).to(dtype)
    dt = torch.randn(batch, H, generator=g).to(dtype)
    A = -torch.rand(H, generator=g) - 0.1
    B, C = (torch.randn(batch, G, N, generator=g).to(dtype) for _ in range(2))
    D, dt_bias = torch.randn(H, generator=g), torch.randn(H, generator=g)
    slots = torch.randperm(slots_total, generator=g)[:batch]
    return state, (x, dt, A, B, C, D, dt_bias, slots)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_triton_equals_ref(batch, dtype):
    state, args = make_inputs(batch, 5, dtype)
    s_tri, s_ref = state.clone(), state.clone()
    y = ssm_state_update(s_tri, *args)
    y_ref = ssm_state_update_ref(s_ref, *args)
    assert y.dtype == dtype
    assert_close("y", y, y_ref, dtype)
    assert_close("state", s_tri, s_ref, torch.float32)
    untouched = torch.ones(5, dtype=torch.bool)
    untouched[args[-1]] = False
    assert torch.equal(s_tri[untouched], state[untouched]), "slots outside the batch changed"


def test_step_continues_the_scan():
    """Scanning t tokens then one decode step equals scanning t+1 tokens."""
    g = torch.Generator().manual_seed(1)
    T = 6
    x = torch.randn(T, H, P, generator=g)
    dt = torch.randn(T, H, generator=g)
    A = -torch.rand(H, generator=g) - 0.1
    B, C = (torch.randn(T, G, N, generator=g) for _ in range(2))
    D, dt_bias = torch.randn(H, generator=g), torch.randn(H, generator=g)
    init = torch.randn(1, H, P, N, generator=g)
    cu = lambda n: torch.tensor([0, n], dtype=torch.int32)  # noqa: E731
    y_all, final_all = ssd_scan_ref(x, dt, A, B, C, D, dt_bias, cu(T), init, 16)
    _, state = ssd_scan_ref(x[:-1], dt[:-1], A, B[:-1], C[:-1], D, dt_bias, cu(T - 1), init, 16)
    cache = F.pad(state, (0, 0, 0, 0, 0, 0, 1, 0))  # the sequence lives in slot 1
    y = ssm_state_update(cache, x[-1:], dt[-1:], A, B[-1:], C[-1:], D, dt_bias, torch.tensor([1]))
    assert_close("y", y, y_all[-1:], torch.float32)
    assert_close("state", cache[1], final_all[0], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs_equal_contiguous(dtype):
    """x, B, C and dt as column slices of one in_proj-like output (odd widths: rows strided and
    unaligned) give exactly what their contiguous copies give."""
    batch = 3
    state, (_, _, A, _, _, D, dt_bias, slots) = make_inputs(batch, 5, dtype, seed=2)
    g = torch.Generator().manual_seed(2)
    _, x, B, C, dt = column_slices(batch, [5, H * P, G * N, G * N, H], dtype, g)
    x, B, C = x.reshape(batch, H, P), B.reshape(batch, G, N), C.reshape(batch, G, N)
    states = [state.clone() for _ in range(3)]
    y = ssm_state_update(states[0], x, dt, A, B, C, D, dt_bias, slots)
    x_c, dt_c, B_c, C_c = (t.contiguous() for t in (x, dt, B, C))
    y_copy = ssm_state_update(states[1], x_c, dt_c, A, B_c, C_c, D, dt_bias, slots)
    y_ref = ssm_state_update_ref(states[2], x, dt, A, B, C, D, dt_bias, slots)
    assert y.is_contiguous() and torch.equal(y, y_copy) and torch.equal(states[0], states[1])
    assert_close("y", y, y_ref, dtype)
    assert_close("state", states[0], states[2], torch.float32)
