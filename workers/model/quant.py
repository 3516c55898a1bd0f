"""Dequantisation of ModelOpt FP8 and NVFP4 linear weights at load time (docs/model.md §6.4).

FP8 (per-tensor): `weight` float8_e4m3fn [out, in], `weight_scale` fp32 scalar.
NVFP4: `weight` uint8 [out, in/2] holding two E2M1 codes per byte (low nibble = even input
index), `weight_scale` float8_e4m3fn [out, in/16] per 16-value block, `weight_scale_2` fp32
global scale. Value = e2m1 × block scale × global scale. Results are cast to `dtype` (bf16 on
the GPU); the quantised kernels that would keep them packed are not built yet.
"""

from __future__ import annotations

import torch

NVFP4_BLOCK = 16
# E2M1 magnitudes for codes 0..7; bit 3 is the sign.
_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def is_quantised(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float8_e4m3fn, torch.uint8)


def dequant_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight [out, in] e4m3, scale scalar fp32 -> [out, in] dtype."""
    if weight.dtype != torch.float8_e4m3fn:
        raise ValueError(f"FP8 weight has dtype {weight.dtype}")
    if scale.numel() != 1:
        raise ValueError(f"FP8 weight_scale must be per-tensor, got shape {tuple(scale.shape)}")
    return (weight.float() * scale.float().reshape(())).to(dtype)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """packed uint8 [..., n/2] -> fp32 [..., n], low nibble first."""
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).long()
    mag = _E2M1.to(packed.device)[codes & 7]
    return torch.where(codes >= 8, -mag, mag)


def dequant_nvfp4(
    weight: torch.Tensor, scale: torch.Tensor, scale_2: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """weight uint8 [out, in/2], scale e4m3 [out, in/16], scale_2 fp32 scalar -> [out, in]."""
    if weight.dtype != torch.uint8:
        raise ValueError(f"NVFP4 weight has dtype {weight.dtype}")
    out, half = weight.shape
    n_in = 2 * half
    if scale.shape != (out, n_in // NVFP4_BLOCK):
        raise ValueError(
            f"NVFP4 weight_scale shape {tuple(scale.shape)}, expected {(out, n_in // NVFP4_BLOCK)}"
        )
    values = unpack_e2m1(weight).view(out, n_in // NVFP4_BLOCK, NVFP4_BLOCK)
    blocks = scale.float().unsqueeze(-1) * scale_2.float().reshape(())
    return (values * blocks).reshape(out, n_in).to(dtype)


def dequantise(
    weight: torch.Tensor, companions: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """Dequantise one linear weight given its `weight_scale` / `weight_scale_2` tensors."""
    if "weight_scale" not in companions:
        raise ValueError(f"quantised weight ({weight.dtype}) without weight_scale")
    if weight.dtype == torch.float8_e4m3fn:
        return dequant_fp8(weight, companions["weight_scale"], dtype)
    if "weight_scale_2" not in companions:
        raise ValueError("NVFP4 weight without weight_scale_2")
    return dequant_nvfp4(weight, companions["weight_scale"], companions["weight_scale_2"], dtype)
