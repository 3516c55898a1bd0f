"""SSD chunked scan: Triton (interpreted) vs the torch reference vs the executable spec.

Tiny shapes with the real structure: 4 heads in 2 groups, chunk 16, so sequences cross chunk
boundaries and packed sequences start mid-way through the chunk grid.
"""

import pytest
import torch
import torch.nn.functional as F

from kernels.ssd_minimal import ssd_chunked, ssd_recurrence
from kernels.ssd_scan import ssd_scan, ssd_scan_ref
from tests.kernels.mamba_helpers import assert_close, column_slices

H, P, G, N, CHUNK = 4, 8, 2, 16, 16


def make_inputs(lens, dtype, with_init, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
    x = torch.randn(T, H, P, generator=g).to(dtype)
    dt = torch.randn(T, H, generator=g).to(dtype)
    A = -torch.rand(H, generator=g) * 2 - 0.1
    B = torch.randn(T, G, N, generator=g).to(dtype)
    C = torch.randn(T, G, N, generator=g).to(dtype)
    D = torch.randn(H, generator=g)
    dt_bias = torch.randn(H, generator=g) - 1
    init = torch.randn(len(lens), H, P, N, generator=g) if with_init else None
    return x, dt, A, B, C, D, dt_bias, cu, init


def test_chunked_spec_equals_recurrence():
    g = torch.Generator().manual_seed(1)
    b, seqlen, h, p, n = 2, 37, 3, 4, 5
    x, B, C = (torch.randn(b, seqlen, h, d, generator=g) for d in (p, n, n))
    dt = F.softplus(torch.randn(b, seqlen, h, generator=g) - 1)
    A = -torch.rand(h, generator=g) - 0.2
    init = torch.randn(b, h, p, n, generator=g)
    for chunk in (1, 8, 16, 64):
        y1, f1 = ssd_recurrence(x, dt, A, B, C, init)
        y2, f2 = ssd_chunked(x, dt, A, B, C, chunk, init)
        assert_close(f"y chunk={chunk}", y2, y1, torch.float32)
        assert_close(f"state chunk={chunk}", f2, f1, torch.float32)


def test_ref_equals_recurrence_per_sequence():
    x, dt, A, B, C, D, dt_bias, cu, init = make_inputs([5, 33, 1], torch.float32, True)
    y, final = ssd_scan_ref(x, dt, A, B, C, D, dt_bias, cu, init, CHUNK)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        dts = F.softplus(dt[s:e] + dt_bias)
        Bs, Cs = (t[s:e].repeat_interleave(H // G, dim=1) for t in (B, C))
        ys, fs = ssd_recurrence(x[None, s:e], dts[None], A, Bs[None], Cs[None], init[i : i + 1])
        assert_close(f"y seq {i}", y[s:e], ys[0] + D[:, None] * x[s:e], torch.float32)
        assert_close(f"state seq {i}", final[i], fs[0], torch.float32)


@pytest.mark.parametrize(
    "lens",
    [[1], [7], [16], [33], [17, 1, 40], [1, 1, 1], [16, 0, 5]],
    ids=lambda lens: "-".join(map(str, lens)),
)
@pytest.mark.parametrize("with_init", [True, False])
def test_triton_equals_ref(lens, with_init):
    args = make_inputs(lens, torch.float32, with_init)
    y, final = ssd_scan(*args, chunk_size=CHUNK)
    y_ref, final_ref = ssd_scan_ref(*args, chunk_size=CHUNK)
    assert_close("y", y, y_ref, torch.float32)
    assert_close("final_states", final, final_ref, torch.float32)


def test_triton_bf16_inputs():
    args = make_inputs([19, 3, 30], torch.bfloat16, True, seed=3)
    y, final = ssd_scan(*args, chunk_size=CHUNK)
    y_ref, final_ref = ssd_scan_ref(*args, chunk_size=CHUNK)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert_close("y", y, y_ref, torch.bfloat16)
    assert_close("final_states", final, final_ref, torch.bfloat16)


def test_packed_equals_per_sequence_loop():
    lens = [9, 1, 21, 16]
    x, dt, A, B, C, D, dt_bias, cu, init = make_inputs(lens, torch.float32, True, seed=4)
    y, final = ssd_scan(x, dt, A, B, C, D, dt_bias, cu, init, CHUNK)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        one = torch.tensor([0, e - s], dtype=torch.int32)
        ys, fs = ssd_scan(
            x[s:e], dt[s:e], A, B[s:e], C[s:e], D, dt_bias, one, init[i : i + 1], CHUNK
        )
        assert_close(f"y seq {i}", y[s:e], ys, torch.float32)
        assert_close(f"state seq {i}", final[i], fs[0], torch.float32)


def test_chunked_prefill_continues_from_final_state():
    """Two prefill steps, the second starting from the first's final states, equal one step."""
    x, dt, A, B, C, D, dt_bias, cu, init = make_inputs([29], torch.float32, True, seed=5)
    whole_y, whole_final = ssd_scan(x, dt, A, B, C, D, dt_bias, cu, init, CHUNK)
    cut = 11
    first = torch.tensor([0, cut], dtype=torch.int32)
    rest = torch.tensor([0, 29 - cut], dtype=torch.int32)
    y1, f1 = ssd_scan(x[:cut], dt[:cut], A, B[:cut], C[:cut], D, dt_bias, first, init, CHUNK)
    y2, f2 = ssd_scan(x[cut:], dt[cut:], A, B[cut:], C[cut:], D, dt_bias, rest, f1, CHUNK)
    assert_close("y", torch.cat([y1, y2]), whole_y, torch.float32)
    assert_close("final_states", f2, whole_final, torch.float32)


def test_triton_equals_ref_chunk_64():
    """The GPU tile shapes (64-row blocks, 32-wide inner steps) over partial chunks."""
    args = make_inputs([70, 3], torch.float32, True, seed=6)
    y, final = ssd_scan(*args, chunk_size=64)
    y_ref, final_ref = ssd_scan_ref(*args, chunk_size=64)
    assert_close("y", y, y_ref, torch.float32)
    assert_close("final_states", final, final_ref, torch.float32)


@pytest.mark.parametrize("chunk", [CHUNK, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs_equal_contiguous(dtype, chunk):
    """x, B, C and dt as column slices of one in_proj-like output (odd widths: rows strided and
    unaligned) give exactly what their contiguous copies give."""
    lens = [19, 3, 70]
    _, _, A, _, _, D, dt_bias, cu, init = make_inputs(lens, dtype, True, seed=7)
    g = torch.Generator().manual_seed(7)
    _, x, B, C, dt = column_slices(sum(lens), [5, H * P, G * N, G * N, H], dtype, g)
    x, B, C = x.reshape(-1, H, P), B.reshape(-1, G, N), C.reshape(-1, G, N)
    y, final = ssd_scan(x, dt, A, B, C, D, dt_bias, cu, init, chunk)
    x_c, dt_c, B_c, C_c = (t.contiguous() for t in (x, dt, B, C))
    y_copy, final_copy = ssd_scan(x_c, dt_c, A, B_c, C_c, D, dt_bias, cu, init, chunk)
    y_ref, final_ref = ssd_scan_ref(x, dt, A, B, C, D, dt_bias, cu, init, chunk)
    assert y.is_contiguous() and torch.equal(y, y_copy) and torch.equal(final, final_copy)
    assert_close("y", y, y_ref, dtype)
    assert_close("final_states", final, final_ref, dtype)
