"""Causal depthwise conv1d: Triton (interpreted) vs torch reference, prefill and decode."""

import pytest
import torch
import torch.nn.functional as F

from kernels.causal_conv1d import (
    causal_conv1d_update,
    causal_conv1d_update_ref,
    causal_conv1d_varlen,
    causal_conv1d_varlen_ref,
)
from tests.kernels.mamba_helpers import assert_close, column_slices

C, K, SLOTS = 20, 4, 7


def make_weights(dtype, g):
    return torch.randn(C, K, generator=g).to(dtype), torch.randn(C, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "lens", [[1], [2, 70], [3, 0, 1, 65], [130]], ids=lambda lens: "-".join(map(str, lens))
)
def test_varlen_equals_ref(lens, dtype):
    g = torch.Generator().manual_seed(len(lens))
    w, bias = make_weights(dtype, g)
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
    x = torch.randn(sum(lens), C, generator=g).to(dtype)
    state = torch.randn(SLOTS, C, K - 1, generator=g).to(dtype)
    slots = torch.randperm(SLOTS, generator=g)[: len(lens)]
    has_init = torch.arange(len(lens)) % 2 == 0
    s_tri, s_ref = state.clone(), state.clone()
    y = causal_conv1d_varlen(x, w, bias, cu, s_tri, slots, has_init)
    y_ref = causal_conv1d_varlen_ref(x, w, bias, cu, s_ref, slots, has_init)
    assert_close("y", y, y_ref, dtype)
    assert_close("conv_state", s_tri, s_ref, dtype)


def test_prefill_then_decode_equals_one_prefill():
    """Prefill, then decode steps through the cache, equal a single prefill of all tokens."""
    g = torch.Generator().manual_seed(0)
    w, bias = make_weights(torch.float32, g)
    x = torch.randn(9, C, generator=g)
    state = torch.zeros(SLOTS, C, K - 1)
    slot, no_init = torch.tensor([4]), torch.tensor([False])
    full = causal_conv1d_varlen(x, w, bias, torch.tensor([0, 9], dtype=torch.int32), state.clone(),
                                slot, no_init)  # fmt: skip
    y_pre = causal_conv1d_varlen(x[:2], w, bias, torch.tensor([0, 2], dtype=torch.int32), state,
                                 slot, no_init)  # fmt: skip
    steps = [causal_conv1d_update(x[t : t + 1], state, w, bias, slot) for t in range(2, 9)]
    assert_close("y", torch.cat([y_pre, *steps]), full, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 4])
def test_update_equals_ref(batch, dtype):
    g = torch.Generator().manual_seed(batch)
    w, bias = make_weights(dtype, g)
    x = torch.randn(batch, C, generator=g).to(dtype)
    state = torch.randn(SLOTS, C, K - 1, generator=g).to(dtype)
    slots = torch.randperm(SLOTS, generator=g)[:batch]
    s_tri, s_ref = state.clone(), state.clone()
    y = causal_conv1d_update(x, s_tri, w, bias, slots)
    y_ref = causal_conv1d_update_ref(x, s_ref, w, bias, slots)
    assert_close("y", y, y_ref, dtype)
    assert_close("conv_state", s_tri, s_ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_rows_equal_contiguous(dtype):
    """x as the xBC column slice of an in_proj output (odd widths: rows strided and unaligned)
    gives exactly what its contiguous copy gives, prefill and decode."""
    g = torch.Generator().manual_seed(5)
    w, bias = make_weights(dtype, g)
    lens = [3, 0, 1, 21]
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
    state = torch.randn(SLOTS, C, K - 1, generator=g).to(dtype)
    slots = torch.randperm(SLOTS, generator=g)[: len(lens)]
    has_init = torch.tensor([True, False, True, False])
    _, x, _ = column_slices(sum(lens), [7, C, 5], dtype, g)
    states = [state.clone() for _ in range(3)]
    y = causal_conv1d_varlen(x, w, bias, cu, states[0], slots, has_init)
    y_copy = causal_conv1d_varlen(x.contiguous(), w, bias, cu, states[1], slots, has_init)
    y_ref = causal_conv1d_varlen_ref(x, w, bias, cu, states[2], slots, has_init)
    assert y.is_contiguous() and torch.equal(y, y_copy) and torch.equal(states[0], states[1])
    assert_close("y", y, y_ref, dtype)
    assert_close("conv_state", states[0], states[2], dtype)

    _, xb, _ = column_slices(len(lens), [7, C, 5], dtype, g)
    y = causal_conv1d_update(xb, states[0], w, bias, slots)
    y_copy = causal_conv1d_update(xb.contiguous(), states[1], w, bias, slots)
    y_ref = causal_conv1d_update_ref(xb, states[2], w, bias, slots)
    assert y.is_contiguous() and torch.equal(y, y_copy) and torch.equal(states[0], states[1])
    assert_close("y decode", y, y_ref, dtype)
    assert_close("conv_state decode", states[0], states[2], dtype)
