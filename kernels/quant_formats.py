"""The number formats of the published FP8 and NVFP4 checkpoints, in plain PyTorch.

Used by the kernels' references, their tests and the loader (quantize at load). Scales are
fp32; a weight is `code * scale`, so quantizing divides by the scale.

FP8 (ModelOpt per-tensor): E4M3 (float8_e4m3fn, finite, max 448), one fp32 scale per tensor
(or one per leading index, e.g. per expert), static activation scales.

NVFP4 (ModelOpt): E2M1 codes, two per byte, the LOW nibble holding the even K index; bit 3 is
the sign and bits 0-2 index the magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}. Every 16 consecutive
K elements share an E4M3 block scale; one fp32 `scale_2` per matrix:
    w[n, k] = e2m1(code[n, k]) * block_scale[n, k // 16] * scale_2.
e2m1 x e4m3 has at most 6 significant bits, so code * block_scale is exact in bf16; only
scale_2 needs fp32.
"""

import torch

E4M3_MAX = 448.0
E2M1_MAX = 6.0
NVFP4_BLOCK = 16

_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Midpoints between neighbouring magnitudes: a value at a midpoint rounds to the even code.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def _per_leading(scale, x):
    """scale 0-d, or [...] indexing x's leading dims: reshaped to broadcast against x."""
    return scale.reshape(scale.shape + (1,) * (x.dim() - scale.dim()))


def quantize_fp8(x, scale):
    """x / scale rounded to E4M3 (nearest, ties to even), saturating at +-448.

    scale fp32, 0-d or one per leading index of x. Returns float8_e4m3fn, x's shape.
    """
    q = x.float() / _per_leading(scale.float(), x)
    return q.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def dequant_fp8(w, scale):
    """w.float() * scale; scale 0-d or one per leading index of w. Returns fp32."""
    return w.float() * _per_leading(scale.float(), w)


def fp8_scale(x):
    """Per-tensor scale amax(|x|) / 448 as an fp32 0-d tensor (never 0: an all-zero x gets the
    smallest normal, so dividing by it stays finite)."""
    amax = x.detach().abs().amax().float()
    return amax.clamp_min(torch.finfo(torch.float32).tiny) / E4M3_MAX


def unpack_e2m1(packed):
    """uint8 [..., n/2] -> fp32 [..., n]: low nibble = even index, bit 3 = sign."""
    assert packed.dtype == torch.uint8, packed.dtype
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).long()  # [..., n]
    table = torch.tensor(_E2M1_VALUES, device=packed.device)
    magnitude = table[codes & 7]
    return torch.where(codes >= 8, -magnitude, magnitude)


def pack_e2m1(values):
    """fp32 [..., n] (n even) -> uint8 [..., n/2]: each value rounded to the nearest E2M1 code
    (ties to the even code, saturating at +-6), two codes per byte, low nibble first.
    unpack_e2m1 inverts it exactly on every byte."""
    assert values.shape[-1] % 2 == 0, values.shape
    v = values.float()
    a = v.abs()
    mids = torch.tensor(_E2M1_MIDPOINTS, device=v.device)
    code = torch.bucketize(a, mids, out_int32=True)  # a at a midpoint m_c gets the lower code c
    at_mid = (code < len(_E2M1_MIDPOINTS)) & (a == mids[code.clamp(max=len(mids) - 1)])
    code = code + (at_mid & (code % 2 == 1)).int()  # ... unless c is odd: then c + 1 (even)
    code = (code | torch.where(torch.signbit(v), 8, 0)).to(torch.uint8)  # -0.0 keeps its sign
    return code[..., 0::2] | (code[..., 1::2] << 4)


def quantize_nvfp4(w):
    """ModelOpt NVFP4 of w [..., N, K] (K a multiple of 16), one scale_2 per [N, K] matrix.

    scale_2 = amax(|w|) / (6 * 448); block_scale = e4m3(block_amax / 6 / scale_2);
    codes = e2m1(w / (block_scale * scale_2)). Returns (packed uint8 [..., N, K/2],
    block_scale float8_e4m3fn [..., N, K/16], scale_2 fp32 [...]). Peak memory is a few
    times w in fp32: quantize a stacked expert tensor in slices of experts.
    """
    *lead, N, K = w.shape
    assert K % NVFP4_BLOCK == 0, f"K={K} is not a multiple of {NVFP4_BLOCK}"
    w = w.float()
    tiny = torch.finfo(torch.float32).tiny
    scale_2 = w.abs().amax(dim=(-2, -1)).clamp_min(tiny) / (E2M1_MAX * E4M3_MAX)  # [...]
    blocks = w.reshape(*lead, N, K // NVFP4_BLOCK, NVFP4_BLOCK)
    block_amax = blocks.abs().amax(-1)  # [..., N, K/16]
    s2 = scale_2[..., None, None]
    block_scale = (block_amax / E2M1_MAX / s2).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    denom = block_scale.float() * s2
    # A block whose scale is 0 (all zeros, or below e4m3's smallest step) encodes as zeros.
    denom = torch.where(denom == 0, 1.0, denom)
    codes = pack_e2m1((blocks / denom[..., None]).reshape(*lead, N, K))
    return codes, block_scale, scale_2


def dequant_nvfp4(packed, block_scale, scale_2):
    """packed uint8 [..., N, K/2], block_scale e4m3 [..., N, K/16], scale_2 fp32 [...]
    -> fp32 [..., N, K]."""
    values = unpack_e2m1(packed)
    *lead, N, K = values.shape
    assert block_scale.shape == (*lead, N, K // NVFP4_BLOCK), (block_scale.shape, values.shape)
    blocks = values.reshape(*lead, N, K // NVFP4_BLOCK, NVFP4_BLOCK)
    blocks = blocks * block_scale.float()[..., None]
    return blocks.reshape(*lead, N, K) * scale_2.float()[..., None, None]
