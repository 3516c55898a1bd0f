"""Dense FP8 W8A8 linear layer with static per-tensor scales (ModelOpt FP8 checkpoints).

Letters: M tokens, K in-features, N out-features.

y = (quantize_fp8(x, input_scale) @ weight^T) * (weight_scale * input_scale), where weight is
E4M3 [N, K] (nn.Linear layout) and both scales are fp32 0-d tensors from the checkpoint.

The kernel quantizes x as it loads each A tile (no separate pass over x, no FP8 copy of it),
multiplies FP8 x FP8 into an fp32 accumulator (the tensor core's, fast accumulation, unless the
config promotes every BLOCK_K) and applies both scales once after the K loop.
A config with quantize_first (since session 13 the defaults up to 256 rows and Hopper's
largest tile) instead quantizes x in one pass (`fp8_quantize`, also used by
kernels/moe_experts_fp8.py) and runs the GEMM on FP8 A tiles: same values, other speed.
The quantization multiplies by the correctly rounded reciprocal of the scale; quantize_fp8
divides, which can differ by one E4M3 step where x / scale falls within an fp32 ulp of a
rounding midpoint (bit-identical for power-of-two scales).

With `relu2_out_scale` the epilogue computes the shared expert's activation: relu(y)², y and
then the square rounded to bf16 as torch computes `F.relu(y).square()` on bf16 y, quantized to
E4M3 by that scale (the down projection's input_scale), which the down projection takes as is.

The Triton interpreter (CPU tests) casts fp32 -> fp8 with the wrong rounding and computes
bf16 arithmetic on raw bits: there `quantize_e4m3` rounds to the E4M3 grid in fp32, every
loaded tile is upcast to fp32 right after its load and `_round_bf16` rounds in fp32 (its own
fp32 -> bf16 cast truncates); the values are the same.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.interpreter import interpreting
from kernels.quant_formats import quantize_fp8


@dataclass(frozen=True)
class Fp8Config:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    quantize_first: bool = False  # x -> E4M3 in its own pass, then an FP8 x FP8 GEMM
    tma: bool = False  # tiles through the TMA engine (tensor descriptors), zero-filled edges
    # acc^T = W x^T: the weight rows fill wgmma's 64-row side and the few token rows its
    # narrow N side. With BLOCK_M = 16 the plain product runs as mma.sync on weights upcast to
    # fp16 (sm_90 SASS: 128 F2FP a K step at 16x64x256); swapped it stays an FP8 wgmma.
    swap_ab: bool = False
    # No promotion into an fp32 accumulator every BLOCK_K (kernels/moe_experts_fp8.py,
    # Fp8GemmConfig.fast_accum: what that costs and buys). Session 14 on the H100, at 16 K
    # rows: in_proj 0.843 against 0.992 ms, out_proj 0.404 against 0.483 (4 stages, which
    # the freed accumulator registers allow); max deviation 5.4e-3 of max|y|.
    fast_accum: bool = True


# (BLOCK_M, BLOCK_N) from largest to smallest: above 256 rows `tiling` takes the first whose
# grid gives every multiprocessor two programs. The H100 sweep of session 13 (2026-12-07,
# benchmarks/RESULTS.md) set the rest:
# - the largest on Hopper is 256 x 128 (the area of 128 x 256, whose two fp32 accumulators,
#   the FP8 promotion's, spill with 8 warps: benchmarks/sass.py), x quantized in its own pass,
#   both tiles through TMA, 3 stages: in_proj / out_proj at 16 K rows 0.931 / 0.471 ms against
#   1.138 / 0.537 with 128 x 256 (4 stages). Without TMA (before Hopper) 128 x 256 stays.
#   Session 14: with fast accumulation 4 stages, 0.843 / 0.404 ms (128 x 256: 0.951 / 0.445).
# - decode batches quantize x once, not in every column block's A load (which is most of the
#   K loop's instructions): 65-256 rows 64 x 128 x 128, in_proj / out_proj at 256 rows 0.035 /
#   0.023 ms against 0.059 / 0.031; up to 64 rows the product swapped (acc^T = W x^T) over
#   weight tiles of 64 columns x 128 deep, 6 stages: at 64 rows 0.023 / 0.017 ms against
#   0.037 / 0.027, at one row 0.022 / 0.016 against 0.023 / 0.017.
_TILES = ((128, 256), (128, 128), (64, 128), (64, 64), (32, 64))
_DECODE_MAX_M, _SKINNY_MAX_M = 64, 256
_INTERPRET = Fp8Config(16, 16, 32, 2, 4, 1)


@triton.jit
def _round_to_e4m3_grid(x):
    # x fp32 within +-448 -> the nearest E4M3 value (ties to even), still fp32. Normal range
    # (|x| >= 2^-6): round the fp32 mantissa to 3 bits; below it E4M3 steps are 2^-9, rounded
    # to an integer count with the 1.5 * 2^23 trick.
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    normal = bits.to(tl.float32, bitcast=True)
    small = ((x * 512.0 + 12582912.0) - 12582912.0) * 0.001953125
    return tl.where(tl.abs(x) < 0.015625, small, normal)


@triton.jit
def _round_bf16(x, INTERPRET: tl.constexpr):
    # fp32 -> the nearest bf16 (ties to even), as fp32.
    if INTERPRET:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def quantize_e4m3(x, inv_scale, INTERPRET: tl.constexpr):
    """x * inv_scale rounded to E4M3 (nearest even), saturating at +-448: float8e4nv on the
    GPU; in the interpreter the same values in fp32 (its own fp32 -> fp8 cast is wrong)."""
    q = tl.clamp(x.to(tl.float32) * inv_scale, -448.0, 448.0)
    if INTERPRET:
        return _round_to_e4m3_grid(q)
    return q.to(tl.float8e4nv)


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["M"])
def _fp8_linear_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    w_scale_ptr,
    x_scale_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    QUANT_A: tl.constexpr,
    TMA: tl.constexpr,
    INTERPRET: tl.constexpr,
    EVEN_K: tl.constexpr,
    SWAP_AB: tl.constexpr,
    FAST_ACCUM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    # Optional, so last: None (compiled out) stores y, a pointer relu(y)² quantized by it.
    relu2_scale_ptr=None,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped raster: GROUP_M row blocks sweep the columns together, so their weight tiles
    # are read from HBM once and then from L2.
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if not TMA:  # x_ptr, w_ptr are tensor descriptors with TMA
        # Rows / columns past the edge load row 0 and are never stored.
        rows = tl.where(offs_m < M, offs_m, 0)
        cols = tl.where(offs_n < N, offs_n, 0)
        x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    x_scale = tl.load(x_scale_ptr)
    inv_x_scale = tl.math.div_rn(1.0, x_scale)

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if TMA:
            x = x_ptr.load([pid_m * BLOCK_M, k0])
            w = w_ptr.load([pid_n * BLOCK_N, k0]).T
        elif EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = (k0 + offs_k) < K
            x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        if INTERPRET:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        if QUANT_A:
            x = quantize_e4m3(x, inv_x_scale, INTERPRET)
        # Hopper's FP8 MMA accumulates with a short mantissa: unless FAST_ACCUM, promote into
        # the fp32 accumulator every BLOCK_K (cuBLAS without fast accumulation; DeepSeek-V3
        # §3.3). None: Triton's sm_90 default, no promotion.
        if SWAP_AB:
            a, b = tl.trans(w), tl.trans(x)
        else:
            a, b = x, w
        acc = tl.dot(a, b, acc, max_num_imprecise_acc=None if FAST_ACCUM else BLOCK_K)
        if not TMA:
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K

    if SWAP_AB:
        acc = tl.trans(acc)
    acc = acc * (tl.load(w_scale_ptr) * x_scale)
    if relu2_scale_ptr is not None:
        # The unfused path stores y in bf16 (this cast is the store's), then torch squares in
        # fp32 and rounds to bf16 again.
        h = tl.maximum(acc.to(tl.bfloat16).to(tl.float32), 0.0)
        inv_scale = tl.math.div_rn(1.0, tl.load(relu2_scale_ptr))
        acc = quantize_e4m3(_round_bf16(h * h, INTERPRET), inv_scale, INTERPRET)
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n"])
def _fp8_quantize_kernel(x_ptr, q_ptr, scale_ptr, n, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    q = quantize_e4m3(x, tl.math.div_rn(1.0, tl.load(scale_ptr)), INTERPRET)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def fp8_quantize(x, scale):
    """E4M3 of x / scale (the reciprocal multiply of the module docstring), saturating.

    x contiguous, any shape, bf16 / fp32; scale fp32 0-d. Returns float8_e4m3fn, x's shape.
    """
    assert x.is_contiguous() and scale.numel() == 1 and scale.dtype == torch.float32
    q = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    block = 1024
    grid = (triton.cdiv(x.numel(), block),)
    _fp8_quantize_kernel[grid](x, q, scale, x.numel(), INTERPRET=interpreting(), BLOCK=block)
    return q


def fp8_quantize_ref(x, scale):
    """Plain PyTorch twin of `fp8_quantize` (which multiplies by 1 / scale)."""
    return quantize_fp8(x, scale)


def pick_config(M, N, device):
    """Fp8Config for an [M, K] x [K, N] product on `device` (`tiling` of its multiprocessor
    count and architecture)."""
    if interpreting():
        return _INTERPRET
    props = torch.cuda.get_device_properties(device)
    return tiling(M, N, props.multi_processor_count, hopper=props.major >= 9)


def tiling(M, N, sms, hopper):
    """Up to 256 rows a decode tiling (x quantized first; swapped up to 64 rows), else the
    largest tile of _TILES (BLOCK_M at most M rounded up to a power of two) whose grid has two
    programs per multiprocessor; on Hopper the largest is 256 x 128 through TMA."""
    if M <= _DECODE_MAX_M:
        block_m = max(16, triton.next_power_of_2(M))
        return Fp8Config(block_m, 64, 128, 8, 4, 6, quantize_first=True, swap_ab=True)
    if M <= _SKINNY_MAX_M:
        return Fp8Config(64, 128, 128, 8, 4, 4, quantize_first=True)
    m_cap = triton.next_power_of_2(M)
    tiles = [(bm, bn) for bm, bn in _TILES if bm <= m_cap]
    bm, bn = next(
        (t for t in tiles if triton.cdiv(M, t[0]) * triton.cdiv(N, t[1]) >= 2 * sms), tiles[-1]
    )
    if bm * bn >= 128 * 256:
        if hopper:
            return Fp8Config(256, 128, 128, 8, 8, 4, quantize_first=True, tma=True)
        return Fp8Config(bm, bn, 128, 8, 8, 3)
    return Fp8Config(bm, bn, 128, 8, 4, 4)


def tilings(max_m, N, sms, hopper):
    """Each `tiling` of an N-column product of 1..max_m rows -> the fewest rows that get it: the
    sizes a warm-up runs so that no tiling compiles inside a job."""
    first = {}
    for m in range(1, max_m + 1):
        first.setdefault(tiling(m, N, sms, hopper), m)
    return first


def _fp8_linear_launch(x, weight, weight_scale, input_scale, relu2_out_scale, config):
    """x [M, K] bf16 (or e4m3, quantized by input_scale); weight [N, K] e4m3; weight_scale,
    input_scale, relu2_out_scale fp32 0-d."""
    M, K = x.shape
    N = weight.shape[0]
    assert weight.shape == (N, K) and weight.dtype == torch.float8_e4m3fn, (weight.shape, K)
    assert weight.stride(1) == 1, "weight must be row-major"
    assert weight_scale.numel() == 1 and input_scale.numel() == 1
    assert weight_scale.dtype == input_scale.dtype == torch.float32
    x = x if x.stride(1) == 1 else x.contiguous()
    cfg = config or pick_config(M, N, x.device)
    given_fp8 = x.dtype == torch.float8_e4m3fn
    dtype = torch.bfloat16 if given_fp8 else x.dtype
    if relu2_out_scale is not None:
        assert dtype == torch.bfloat16, "the relu² epilogue rounds as torch does on bf16"
        assert relu2_out_scale.numel() == 1 and relu2_out_scale.dtype == torch.float32
        dtype = torch.float8_e4m3fn
    y = torch.empty(M, N, device=x.device, dtype=dtype)
    a = fp8_quantize(x, input_scale) if cfg.quantize_first and not given_fp8 else x
    a_arg, w_arg = a, weight
    if cfg.tma:
        a_arg = TensorDescriptor.from_tensor(a, [cfg.block_m, cfg.block_k])
        w_arg = TensorDescriptor.from_tensor(weight, [cfg.block_n, cfg.block_k])
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
    _fp8_linear_kernel[grid](
        a_arg, w_arg, y, weight_scale, input_scale, M, N, K,
        a.stride(0), weight.stride(0), y.stride(0),
        QUANT_A=a.dtype != torch.float8_e4m3fn, TMA=cfg.tma, INTERPRET=interpreting(),
        EVEN_K=K % cfg.block_k == 0, SWAP_AB=cfg.swap_ab, FAST_ACCUM=cfg.fast_accum,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        relu2_scale_ptr=relu2_out_scale, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return y


def fp8_linear(
    x, weight, weight_scale, input_scale, relu2_out_scale=None, config: Fp8Config | None = None
):
    """x [M, K] bf16 -> [M, N] bf16 through an E4M3 weight [N, K] with per-tensor fp32 scales
    weight_scale and input_scale (static: x is quantized by it, saturating at +-448). x may
    come already in E4M3, quantized by input_scale (what a producer with the quantization in
    its epilogue would hand over; the benchmark's GEMM-only row, as torch._scaled_mm gets it).
    relu2_out_scale (fp32 0-d): return relu(y)² quantized to E4M3 by it instead (float8_e4m3fn,
    the values of `fp8_quantize(F.relu(y).square(), relu2_out_scale)`).
    `config` None picks the tiling by size (pick_config); benchmarks pass others to compare.
    """
    return _fp8_linear_launch(x, weight, weight_scale, input_scale, relu2_out_scale, config)


def fp8_linear_ref(x, weight, weight_scale, input_scale, relu2_out_scale=None):
    """Plain PyTorch twin of `fp8_linear`: x [M, K] bf16 (or e4m3, already quantized),
    weight [N, K] e4m3, weight_scale / input_scale fp32 0-d. Returns [M, N] in x's dtype, bf16
    for e4m3 x (fp32 math); with relu2_out_scale relu(y)² quantized by it, float8_e4m3fn."""
    if x.dtype == torch.float8_e4m3fn:
        xq, dtype = x.float(), torch.bfloat16
    else:
        xq, dtype = quantize_fp8(x, input_scale).float(), x.dtype
    y = (xq @ weight.float().t() * (weight_scale.float() * input_scale.float())).to(dtype)
    return y if relu2_out_scale is None else quantize_fp8(torch.relu(y).square(), relu2_out_scale)
