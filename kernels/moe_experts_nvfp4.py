"""Routed MoE experts of the NVFP4 checkpoint as W4A16 on Hopper (no FP4 tensor cores).

Letters: T tokens, D hidden, I expert inner size, E experts, k experts per token,
A = T*k assignments, R = padded rows (moe_align), G = BLOCK_K / 16 scale groups of a tile.

Weights stay packed as published (kernels/quant_formats.py) and are read in that layout:
packed [E, N, K/2] bytes (low nibble = even k), block scales [E, N, K/16] e4m3, scale_2 [E].
The checkpoint's input_scale is unused: activations stay bf16.

Dequantization in registers, exact: a nibble's bits (sign, 2 exponent bits, 1 mantissa bit)
placed at bf16's sign and lowest exponent / highest mantissa bits make e2m1 * 2^-126 (a
subnormal bf16 for code 1, 0.5); multiplied by block_scale * 2^118 (at most 448 * 2^118 <
2^128, in bf16) that is code * block_scale * 2^-8 with at most 6 significant bits, exact. The
bf16 MMA accumulates in fp32 and the epilogue multiplies by scale_2 * 2^8. In the Triton
interpreter (bf16 arithmetic on raw bits there) the same values are built in fp32.

Steps and tiles as kernels/moe_experts_fp8.py (kernels/moe_tiles.py): moe_align; up GEMM
(x gathered by token, relu^2, h [R, I] in bf16); down GEMM (combine weight, y [A, D]);
moe_sum. K = 1856 (down) is 14.5 x 128: the last K tile is masked by scale groups.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.interpreter import interpreting
from kernels.moe_align import moe_align
from kernels.moe_experts import GemmConfig
from kernels.moe_tiles import column_launches, moe_sum, tile_of
from kernels.quant_formats import NVFP4_BLOCK, dequant_nvfp4


@dataclass(frozen=True)
class Nvfp4Weight:
    """One stacked NVFP4 expert matrix, logically [E, N, K], in the published layout."""

    packed: torch.Tensor  # uint8 [E, N, K/2], low nibble = even k
    block_scale: torch.Tensor  # float8_e4m3fn [E, N, K/16]
    scale_2: torch.Tensor  # fp32 [E]

    def __post_init__(self):
        E, N, half_k = self.packed.shape
        assert self.packed.dtype == torch.uint8, self.packed.dtype
        assert self.block_scale.dtype == torch.float8_e4m3fn, self.block_scale.dtype
        assert self.block_scale.shape == (E, N, 2 * half_k // NVFP4_BLOCK), (
            self.block_scale.shape,
            self.packed.shape,
        )
        assert self.scale_2.shape == (E,) and self.scale_2.dtype == torch.float32

    @property
    def shape(self):
        """Logical (E, N, K)."""
        E, N, half_k = self.packed.shape
        return E, N, 2 * half_k

    def dequant(self, e):
        """Expert e's matrix [N, K] in fp32."""
        return dequant_nvfp4(self.packed[e], self.block_scale[e], self.scale_2[e])


@dataclass(frozen=True)
class Nvfp4Config(GemmConfig):
    # Codes -> scaled bf16 by inline PTX (_E2M1_PTX: a byte's two codes times their block
    # scale in one register, 2.5 instructions an element) instead of Triton integer ops on
    # each element; same values. The H100 sweep of 2026-12-06 (session 8) timed an earlier
    # PTX version and the integer ops within 3 %; the best tilings ran with the PTX.
    ptx_dequant: bool = False
    # Weights as the MMA's first operand (acc^T = W x^T): Hopper's wgmma takes that operand
    # from registers, so the dequantized tile is not stored to shared memory behind a barrier
    # each K step (compiled for sm_90 the loop keeps 3 wgmmas in flight). The prefill tiling;
    # slower at decode (session 9: 0.73-0.97 against 1.18 TB/s, T = 64).
    swap_ab: bool = False


# H100 sweeps (benchmarks/RESULTS.md): prefill swapped 256x128x128 (session 13: 258 TFLOP/s at
# 16 K tokens against 236 with the plain 256x64x64 of session 8; 310 in session 14 with the
# 16-byte weight loads), decode 16x128x64 (6 stages: 1.19 TB/s of weights at T = 64, 1.05
# with 16x64x64; session 14, padding rows unloaded and 16-byte weight loads: 1.46, where 16 x
# 256 tiles, 2 warps or BLOCK_K 128 gave 1.37-1.41; session 16: 4 stages 2.3-2.7 % faster
# than 6, 3 and 5 within 1 % of 4; session 17, this PTX: 16x128x64 w4 s4 still the best at
# T = 64, 16x64x64 on 2 warps 2.4 % faster at T = 256 and 1 % slower at 64). Gone after
# measuring: the low and high nibbles as two half-K operands (session 8 with strided x loads,
# 2-5 x slower; session 13 with x split in registers, 92 fewer SASS instructions a K step at
# the decode tile yet 1.16 against 1.19 TB/s, and 171 against 236 TFLOP/s at prefill); the
# nibbles repacked at load so that no byte permute interleaves low and high codes (session
# 16: 33 fewer instructions a decode K step, decode 2-3 % faster, prefill 4 % slower, its
# wgmma operand then converted through shared memory; the PTX of session 17 pairs the codes
# in registers instead, with no cost at prefill).
_PREFILL = Nvfp4Config(256, 128, 128, 8, 8, 3, split_tail=True, ptx_dequant=True, swap_ab=True)
_DECODE = Nvfp4Config(16, 128, 64, 0, 4, 4, ptx_dequant=True)
_INTERPRET = Nvfp4Config(16, 16, 32, 4, 4, 1, split_tail=True)
_DECODE_ROWS_PER_EXPERT = 32
_TWO_POW_118 = tl.constexpr(2.0**118)


# One byte and its block scale -> a 32-bit register holding its two codes times the scale as
# bf16, low nibble in the low half: k and k + 1 paired as the MMA operand wants them. l and u
# hold the low and the high nibble of each byte; prmt builds [l byte j, 0, u byte j, 0]
# (selector 0xF: a zero byte); t * 4160 = (t << 6) + (t << 12) (no bits overlap) puts each
# code's magnitude at bf16 bits 6-8 (22-24) and its sign at bit 15 (31), one mask keeps
# those bits, one bf16x2 multiply scales. H100, session 17 (the op, T = 64 / 256 / 16 K):
# 1.7 / 2.0 / 0.5 % faster than two shifts and an or; with moe_align's one program 3-5 % faster
# than the PTX before, which gave each nibble half its own register and interleaved them.
_E2M1_PTX = tl.constexpr(
    "{ .reg .b32 l, u, t, a, s; .reg .b16 h0, h1, h2, h3; shr.b32 u, $4, 4; "
    "and.b32 l, $4, 0x0F0F0F0F; and.b32 u, u, 0x0F0F0F0F; "
    "mov.b32 {h0, h1}, $5; mov.b32 {h2, h3}, $6; "
    + "".join(
        f"prmt.b32 t, l, u, 0xF{4 + j}F{j}; mul.lo.u32 a, t, 4160; "
        f"and.b32 a, a, 0x81C081C0; mov.b32 s, {{h{j}, h{j}}}; mul.rn.bf16x2 ${j}, a, s; "
        for j in range(4)
    )
    + "}"
)


@triton.jit
def _e2m1(p, INTERPRET: tl.constexpr):
    # p uint8, any shape -> (low nibbles, high nibbles) as code * 2^-126 in p's shape: bf16,
    # fp32 interpreted (the module docstring).
    if INTERPRET:
        q = p.to(tl.uint32)
        lo = (((q << 28) & 0x80000000) | ((q << 22) & 0x01C00000)).to(tl.float32, bitcast=True)
        hi = (((q << 24) & 0x80000000) | ((q << 18) & 0x01C00000)).to(tl.float32, bitcast=True)
    else:
        q = p.to(tl.uint16)
        lo = (((q << 12) & 0x8000) | ((q << 6) & 0x1C0)).to(tl.bfloat16, bitcast=True)
        hi = (((q << 8) & 0x8000) | ((q << 2) & 0x1C0)).to(tl.bfloat16, bitcast=True)
    return lo, hi


@triton.jit
def _scale(s, INTERPRET: tl.constexpr):
    # e4m3 block scales -> block_scale * 2^118 (exact in bf16), fp32 interpreted
    scale = s.to(tl.float32) * _TWO_POW_118
    if not INTERPRET:
        scale = scale.to(tl.bfloat16)
    return scale


@triton.jit
def _dequant_tile(
    p, s, INTERPRET: tl.constexpr, PTX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    # p uint8 [BN, G, 8]: byte j of group g holds k = 16g + 2j (low nibble) and 16g + 2j + 1;
    # s e4m3 [BN, G]. Returns code * block_scale * 2^-8 as [BN, BK], bf16 (fp32 interpreted).
    scale = _scale(s, INTERPRET)
    scale = tl.broadcast_to(scale[:, :, None], (BLOCK_N, BLOCK_K // 16, 8))
    if PTX:
        pair = tl.inline_asm_elementwise(
            _E2M1_PTX, "=r,=r,=r,=r,r,r,r", [p, scale], dtype=tl.uint32, is_pure=True, pack=4
        )
        lo = pair.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        hi = (pair >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    else:
        lo, hi = _e2m1(p, INTERPRET)
        # k = 16g + 2j + nibble. The scale multiplies after the reshape: Triton 3.6 fails
        # ("Illegal shared layout") when the MMA operand's shared-memory copy is a reshape of
        # the 4-D join; the multiply keeps the reshape in registers.
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
        w = w * tl.reshape(tl.join(scale, scale), (BLOCK_N, BLOCK_K))
    return w


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["num_valid", "num_blocks_m", "group_m"])
def _moe_nvfp4_gemm_kernel(
    a_ptr,
    w_ptr,
    s_ptr,
    s2_ptr,
    c_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    topk_w_ptr,
    num_valid,
    n_start,
    n_end,
    K,
    num_blocks_m,
    stride_am,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_cm,
    group_m,
    TOP_K: tl.constexpr,
    UP: tl.constexpr,
    INTERPRET: tl.constexpr,
    PTX: tl.constexpr,
    EVEN_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # UP: a = x [T, K] gathered by token, c = h [R, N] at padded rows, relu^2 applied.
    # Down: a = h [R, K] contiguous, c = y [A, N] at assignment rows, combine weight applied.
    # This launch covers output columns [n_start, n_end).
    G: tl.constexpr = BLOCK_K // 16
    pid_m, pid_n = tile_of(
        tl.program_id(0), num_blocks_m, tl.cdiv(n_end - n_start, BLOCK_N), group_m
    )
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rows)  # assignment index, num_valid on padding rows
    valid = ids < num_valid
    a_rows = tl.where(valid, ids // TOP_K, 0) if UP else rows
    offs_n = n_start + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = tl.where(offs_n < n_end, offs_n, 0)
    e = expert.to(tl.int64)
    a_rows_ptr = a_ptr + a_rows[:, None].to(tl.int64) * stride_am
    offs_k = tl.arange(0, BLOCK_K)
    offs_g = tl.arange(0, G)
    offs_b = tl.arange(0, BLOCK_K // 2)
    a_ptrs = a_rows_ptr + offs_k[None, :]
    # A row's BLOCK_K / 2 bytes as one 2-D row (16-byte loads; indexed [BN, G, 8] the loads
    # were 8 bytes wide), reshaped to [BN, G, 8] in registers.
    p_ptrs = w_ptr + e * stride_we + w_rows[:, None] * stride_wn + offs_b[None, :]
    s_ptrs = s_ptr + e * stride_se + w_rows[:, None] * stride_sn + offs_g[None, :]

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Padding rows load nothing: at decode most of a tile's rows are padding (≈ 3 of 16 at
    # T = 64), and their x (2 KiB a K step at 16 x 128 x 64) went through L1 beside the
    # 4.5 KiB of weights and scales.
    a_ok = valid[:, None]
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=a_ok, other=0.0)
            p = tl.load(p_ptrs)
            s = tl.load(s_ptrs)
        else:
            # K is a multiple of 16: whole scale groups are in or out.
            g_ok = (k0 // 16 + offs_g) < K // 16
            a = tl.load(a_ptrs, mask=a_ok & ((k0 + offs_k)[None, :] < K), other=0.0)
            p = tl.load(p_ptrs, mask=(k0 // 2 + offs_b)[None, :] < K // 2, other=0)
            s = tl.load(s_ptrs, mask=g_ok[None, :], other=0.0)
        p = tl.reshape(p, (BLOCK_N, G, 8))
        if INTERPRET:
            a = a.to(tl.float32)
        w = _dequant_tile(p, s, INTERPRET, PTX, BLOCK_N, BLOCK_K)
        acc = tl.dot(w, tl.trans(a), acc) if SWAP_AB else tl.dot(a, tl.trans(w), acc)
        a_ptrs += BLOCK_K
        p_ptrs += BLOCK_K // 2
        s_ptrs += G

    if SWAP_AB:
        acc = tl.trans(acc)
    acc = acc * (tl.load(s2_ptr + expert) * 256.0)  # scale_2 and the 2^-8 of the tiles
    n_ok = offs_n < n_end
    if UP:
        acc = tl.maximum(acc, 0.0)
        acc = acc * acc
        c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=n_ok[None, :])
    else:
        weight = tl.load(topk_w_ptr + ids, mask=valid, other=0.0)
        acc = acc * weight[:, None]
        c_ptrs = c_ptr + ids[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])


def _gemm(a, w, c, routed, up, cfg):
    """One of the op's two GEMMs. w: Nvfp4Weight; routed = (sorted_ids, block_expert, topk_w,
    A, k)."""
    sorted_ids, block_expert, topk_w, num_valid, top_k = routed
    _, N, K = w.shape
    packed, block_scale = w.packed, w.block_scale
    assert packed.stride(2) == 1 and block_scale.stride(2) == 1, "NVFP4 weights: row-major"
    num_blocks_m = block_expert.numel()
    for n_start, n_end, block_n in column_launches(N, cfg.block_n, cfg.split_tail):
        grid = (num_blocks_m * triton.cdiv(n_end - n_start, block_n),)
        _moe_nvfp4_gemm_kernel[grid](
            a, packed, block_scale, w.scale_2, c, sorted_ids, block_expert, topk_w,
            num_valid, n_start, n_end, K, num_blocks_m, a.stride(0),
            packed.stride(0), packed.stride(1), block_scale.stride(0), block_scale.stride(1),
            c.stride(0), cfg.group_m or num_blocks_m,
            TOP_K=top_k, UP=up, INTERPRET=interpreting(), PTX=cfg.ptx_dequant,
            EVEN_K=K % cfg.block_k == 0, SWAP_AB=cfg.swap_ab,
            BLOCK_M=cfg.block_m, BLOCK_N=block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip


def pick_config(num_tokens, top_k, num_experts):
    """GemmConfig of both GEMMs: the decode one when prefill tiles would be mostly padding."""
    if interpreting():
        return _INTERPRET
    if num_tokens * top_k < _DECODE_ROWS_PER_EXPERT * num_experts:
        return _DECODE
    return _PREFILL


def _moe_experts_nvfp4_launch(x, up, down, topk_weights, topk_ids, config):
    """x [T, D] bf16; up: Nvfp4Weight [E, I, D]; down: Nvfp4Weight [E, D, I];
    topk_weights [T, k] fp32; topk_ids [T, k] int32."""
    T, D = x.shape
    E, inner, _ = up.shape
    k = topk_ids.shape[1]
    assert up.shape == (E, inner, D) and down.shape == (E, D, inner), (up.shape, down.shape)
    assert topk_ids.shape == (T, k) and topk_ids.dtype == torch.int32
    assert topk_weights.shape == (T, k) and topk_weights.dtype == torch.float32
    x = x.contiguous()
    cfg = config or pick_config(T, k, E)
    assert cfg.block_k % NVFP4_BLOCK == 0, cfg
    assert not (cfg.ptx_dequant and interpreting()), "inline PTX does not run in the interpreter"

    sorted_ids, block_expert, _ = moe_align(topk_ids, E, cfg.block_m)
    routed = (sorted_ids, block_expert, topk_weights.contiguous(), T * k, k)
    h = torch.empty(sorted_ids.numel(), inner, device=x.device, dtype=x.dtype)  # [R, I]
    y = torch.empty(T * k, D, device=x.device, dtype=x.dtype)  # [A, D]
    _gemm(x, up, h, routed, True, cfg)
    _gemm(h, down, y, routed, False, cfg)
    return moe_sum(y, k)


def moe_experts_nvfp4(x, up, down, topk_weights, topk_ids, config: Nvfp4Config | None = None):
    """Routed experts of the NVFP4 checkpoint (shared expert not included), W4A16.

    x [T, D] bf16; up: Nvfp4Weight [E, I, D]; down: Nvfp4Weight [E, D, I] (nn.Linear
    layout); topk_weights [T, k] fp32; topk_ids [T, k] int32. Returns out [T, D] in x's
    dtype. `config` None picks the tiling by size (pick_config).
    """
    return _moe_experts_nvfp4_launch(x, up, down, topk_weights, topk_ids, config)


def moe_experts_nvfp4_ref(x, up, down, topk_weights, topk_ids):
    """Plain PyTorch twin of `moe_experts_nvfp4`: per expert that got tokens, dequantize
    (fp32) then the bf16 expert math of kernels/moe_experts.py (h rounded to x's dtype).

    x [T, D] bf16; up: Nvfp4Weight [E, I, D]; down: Nvfp4Weight [E, D, I];
    topk_weights [T, k] fp32; topk_ids [T, k] int32. Returns [T, D] in x's dtype.
    """
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    flat_ids = topk_ids.reshape(-1).long()
    for e in torch.unique(flat_ids).tolist():
        assign = (flat_ids == e).nonzero().squeeze(1)  # [n] indices into T*k
        tokens = assign // topk_ids.shape[1]
        h = torch.relu(x[tokens].float() @ up.dequant(e).t()).square().to(x.dtype)
        y = h.float() @ down.dequant(e).t() * topk_weights.reshape(-1)[assign, None]
        out.index_add_(0, tokens, y.to(x.dtype).float())
    return out.to(x.dtype)
