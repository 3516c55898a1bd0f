"""FP8 and NVFP4 format primitives (kernels/quant_formats.py)."""

import pytest
import torch

from kernels.quant_formats import (
    E4M3_MAX,
    dequant_fp8,
    dequant_nvfp4,
    fp8_scale,
    pack_e2m1,
    quantize_fp8,
    quantize_nvfp4,
    unpack_e2m1,
)
from tests.kernels.quant_helpers import randn

MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_unpack_nibble_order_sign_and_table():
    # 0x21: low nibble 1 (even index) = 0.5, high nibble 2 (odd index) = 1.0.
    assert unpack_e2m1(torch.tensor([0x21], dtype=torch.uint8)).tolist() == [0.5, 1.0]
    # 0xF8: low nibble 8 = -0.0, high nibble 15 = -6.
    low, high = unpack_e2m1(torch.tensor([0xF8], dtype=torch.uint8)).tolist()
    assert (low, high) == (0.0, -6.0) and torch.signbit(torch.tensor(low))
    every = unpack_e2m1(torch.arange(256, dtype=torch.uint8))  # [512]
    for byte in range(256):
        for j, code in enumerate((byte & 0xF, byte >> 4)):
            want = MAGNITUDES[code & 7] * (-1 if code & 8 else 1)
            assert every[2 * byte + j].item() == want, (byte, j)


def test_pack_unpack_round_trip_every_byte():
    packed = torch.arange(256, dtype=torch.uint8).view(16, 16)
    assert torch.equal(pack_e2m1(unpack_e2m1(packed)), packed)


def test_pack_rounds_to_nearest_ties_to_even_and_saturates():
    cases = {
        0.2: 0.0, 0.25: 0.0, 0.26: 0.5, 0.75: 1.0, 1.25: 1.0, 1.3: 1.5, 1.75: 2.0,
        2.5: 2.0, 2.6: 3.0, 3.5: 4.0, 4.9: 4.0, 5.0: 4.0, 5.1: 6.0, 7.0: 6.0, 1e9: 6.0,
    }  # fmt: skip
    values = torch.tensor([[v, -v] for v in cases]).flatten()
    got = unpack_e2m1(pack_e2m1(values)).view(-1, 2)
    for (v, want), (pos, neg) in zip(cases.items(), got.tolist(), strict=True):
        assert (pos, neg) == (want, -want), v


def test_pack_equals_nearest_code_on_random_values():
    v = randn(4, 64, seed=0, scale=3.0)
    got = unpack_e2m1(pack_e2m1(v))
    table = torch.tensor(MAGNITUDES)
    dist = (v.abs()[..., None] - table).abs()
    nearest = table[dist.argmin(-1)] * torch.where(v < 0, -1.0, 1.0)
    assert torch.equal(got, nearest)  # random fp32 values never sit exactly on a midpoint


def test_quantize_fp8_bounds_and_saturation():
    x = randn(64, 48, seed=1, scale=5.0)
    scale = fp8_scale(x)
    assert scale.dim() == 0 and scale.dtype == torch.float32
    assert scale.item() == pytest.approx(x.abs().max().item() / E4M3_MAX)
    q = quantize_fp8(x, scale)
    assert q.dtype == torch.float8_e4m3fn
    back = dequant_fp8(q, scale)
    # 3 mantissa bits: relative error <= 2^-4 in the normal range, one 2^-10 step below it.
    assert ((back - x).abs() <= 2**-4 * x.abs() + 2**-10 * scale).all()
    assert back.abs().max().item() == pytest.approx(x.abs().max().item(), rel=1e-6)
    big = quantize_fp8(torch.tensor([1e6, -1e6, 460.0]), torch.tensor(1.0))
    assert big.float().tolist() == [E4M3_MAX, -E4M3_MAX, E4M3_MAX]
    zero_scale = fp8_scale(torch.zeros(3))
    assert zero_scale > 0
    assert (dequant_fp8(quantize_fp8(torch.zeros(3), zero_scale), zero_scale) == 0).all()


def test_fp8_scale_per_leading_index():
    w = randn(3, 8, 16, seed=2) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    scale = torch.stack([fp8_scale(we) for we in w])
    q = quantize_fp8(w, scale)
    for e in range(3):
        assert torch.equal(q[e].float(), quantize_fp8(w[e], scale[e]).float())
        assert q[e].float().abs().max().item() == E4M3_MAX
    assert torch.allclose(dequant_fp8(q, scale), w, rtol=2**-4, atol=1e-3 * scale.max().item())


@pytest.mark.parametrize("shape", [(32, 64), (3, 5, 48)])
def test_quantize_nvfp4_layout_and_bounds(shape):
    w = randn(*shape, seed=3) * torch.linspace(0.01, 3.0, shape[-1])  # blocks of varied range
    packed, block_scale, scale_2 = quantize_nvfp4(w)
    *lead, N, K = shape
    assert packed.shape == (*lead, N, K // 2) and packed.dtype == torch.uint8
    assert block_scale.shape == (*lead, N, K // 16) and block_scale.dtype == torch.float8_e4m3fn
    assert scale_2.shape == tuple(lead) and scale_2.dtype == torch.float32
    back = dequant_nvfp4(packed, block_scale, scale_2)
    step = (block_scale.float() * scale_2[..., None, None]).repeat_interleave(16, -1)
    # Codes are at most one step (the spacing between 4 and 6 is 2 steps) from the scaled value;
    # the block maximum can exceed 6 steps by the e4m3 rounding of its scale (<= 2^-4).
    block_max = w.abs().reshape(*lead, N, K // 16, 16).amax(-1).repeat_interleave(16, -1)
    assert ((back - w).abs() <= step + 2**-4 * block_max + 1e-7).all()
    # The matrix's largest element sits on the top code with the top block scale: exact.
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in lead]) if lead else [()]:
        idx = tuple(torch.atleast_1d(torch.as_tensor(idx)).tolist())
        flat = w[idx].abs().argmax()
        assert back[idx].flatten()[flat].abs().item() == pytest.approx(
            w[idx].abs().max().item(), rel=1e-6
        )
        assert block_scale[idx].float().max().item() == E4M3_MAX


def test_quantize_nvfp4_encodes_zero_blocks_as_zero():
    w = torch.zeros(4, 32)
    w[0, :16] = randn(16, seed=4)
    packed, block_scale, scale_2 = quantize_nvfp4(w)
    back = dequant_nvfp4(packed, block_scale, scale_2)
    assert torch.isfinite(back).all() and (back[1:] == 0).all() and (back[0, 16:] == 0).all()
    assert torch.isfinite(dequant_nvfp4(*quantize_nvfp4(torch.zeros(2, 16)))).all()
