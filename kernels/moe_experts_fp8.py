"""Routed MoE experts of the FP8 checkpoint (W8A8, static per-tensor scales).

Letters: T tokens, D hidden, I expert inner size, E experts, k experts per token,
A = T*k assignments, R = padded rows (moe_align).

out[t] = sum_j w_j * down_e(relu(up_e(x_t))^2) as in kernels/moe_experts.py, with
  x quantized by up_input_scale (one per MoE: the loader takes the max over experts),
  up_e = up[e] * up_scale[e], h = relu(.)^2 quantized by down_input_scale, down_e likewise.

Steps (kernels/moe_tiles.py): moe_align; x -> E4M3 in one pass (fp8_quantize: each row is
read by k experts and every column block, so quantizing once beats quantizing in each A load);
up GEMM FP8 x FP8 into fp32, then (up_scale[e] * up_input_scale), relu^2 and the E4M3
quantization of h by down_input_scale in its epilogue: h [R, I] is stored in E4M3. Down GEMM:
FP8 x FP8, then (down_scale[e] * down_input_scale) * combine weight, y [A, D] in bf16; moe_sum.
"""

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.fp8_linear import fp8_quantize, quantize_e4m3
from kernels.interpreter import interpreting
from kernels.moe_align import moe_align
from kernels.moe_experts import GemmConfig
from kernels.moe_tiles import column_launches, moe_sum, tile_of
from kernels.quant_formats import quantize_fp8


@dataclass(frozen=True)
class Fp8GemmConfig(GemmConfig):
    # Weight tiles (and the down GEMM's contiguous h tiles) through the TMA engine, as
    # fp8_linear's fastest tiling; x's gathered rows stay pointer loads. Needs Hopper (sm_90+)
    # and rows of 16-byte multiples (K % 16 == 0: the checkpoint's 2688 and 1856 are).
    tma: bool = False
    # Sum each tile over the whole K in the tensor core's own accumulator (Triton's default for
    # FP8 on sm_90, torch._scaled_mm's use_fast_accum, vLLM's FP8 MoE). False: promote it
    # into an fp32 accumulator every BLOCK_K (cuBLAS without fast accumulation; DeepSeek-V3
    # §3.3), which waits for each K step's wgmma before adding, so no MMA overlaps the next
    # step's loads (sm_90 SASS: WARPGROUP.DEPBAR 0 and 64 FADD a K step at 128 x 128). On the
    # H100 at 16 K tokens (session 14) the op took 2.51 ms instead of 3.08 at 128 x 128, and
    # 128 x 256 fits (one accumulator, no spill in the K loop): 2.29 ms; its
    # mean deviation from the fp32 reference grew from 3.5e-4 to 1.2e-3 of max|out|, below
    # bf16's 3.9e-3 step (most of it: h rounding to the neighbouring E4M3 value).
    fast_accum: bool = True


# H100 sweeps (benchmarks/kernels_quant_sweep.py, benchmarks/RESULTS.md). Prefill T=16K:
# 128x256x128, fast accumulation, 8 warps, 3 stages, weight tiles through TMA, 16 row blocks a
# group: 856 TFLOP/s in session 14 (promoted 128x128x128, 4 stages: 637; vLLM's H200 tile
# 128x256x128 with pointer loads and promotion: 355 in session 7). Decode T=64/256: 16x64x256,
# all tiles of a column block together, 2.7 TB/s of weights at T = 64 (TMA within 1 %).
_PREFILL = Fp8GemmConfig(128, 256, 128, 16, 8, 3, split_tail=True, tma=True)
_DECODE = Fp8GemmConfig(16, 64, 256, 0, 4, 4)
_INTERPRET = Fp8GemmConfig(16, 16, 32, 4, 4, 1, split_tail=True)
_DECODE_ROWS_PER_EXPERT = 32


# batch-sized integers unspecialised: no recompile on the engine thread per batch shape
@triton.jit(do_not_specialize=["num_valid", "num_blocks_m", "group_m"])
def _moe_fp8_gemm_kernel(
    a_ptr,
    w_ptr,
    c_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    topk_w_ptr,
    w_scale_ptr,
    a_scale_ptr,
    c_scale_ptr,
    num_valid,
    n_start,
    n_end,
    N,
    K,
    num_blocks_m,
    stride_am,
    stride_we,
    stride_wn,
    stride_cm,
    group_m,
    TOP_K: tl.constexpr,
    UP: tl.constexpr,
    TMA: tl.constexpr,
    INTERPRET: tl.constexpr,
    EVEN_K: tl.constexpr,
    FAST_ACCUM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # UP: a = x [T, K] e4m3 gathered by token, c = h [R, N] e4m3 at padded rows. Down:
    # a = h [R, K] e4m3 contiguous, c = y [A, N] at assignment rows, combine weight applied.
    # This launch covers output columns [n_start, n_end). TMA: w_ptr is a descriptor of the
    # weights as [E * N, K] (rows past this expert's N land in masked columns; past K and
    # the last expert, zeros), a_ptr of h [R, K] when not UP.
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
    offs_k = tl.arange(0, BLOCK_K)
    A_TMA: tl.constexpr = TMA and not UP
    if not A_TMA:
        a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    if not TMA:
        w_ptrs = (
            w_ptr + expert.to(tl.int64) * stride_we + w_rows[None, :] * stride_wn + offs_k[:, None]
        )

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_ok = valid[:, None]  # padding rows load nothing (most of a decode tile's rows)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        if A_TMA:
            a = a_ptr.load([pid_m * BLOCK_M, k0])
        elif EVEN_K:
            a = tl.load(a_ptrs, mask=a_ok, other=0.0)
        else:
            a = tl.load(a_ptrs, mask=a_ok & k_ok[None, :], other=0.0)
        if TMA:
            w = w_ptr.load([expert * N + n_start + pid_n * BLOCK_N, k0]).T
        elif EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        if INTERPRET:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        # Hopper's FP8 MMA accumulates with a short mantissa: unless FAST_ACCUM, promote into
        # the fp32 accumulator every BLOCK_K (cuBLAS without fast accumulation; DeepSeek-V3
        # §3.3). None: Triton's sm_90 default, no promotion.
        acc = tl.dot(a, w, acc, max_num_imprecise_acc=None if FAST_ACCUM else BLOCK_K)
        if not A_TMA:
            a_ptrs += BLOCK_K
        if not TMA:
            w_ptrs += BLOCK_K

    acc = acc * (tl.load(w_scale_ptr + expert) * tl.load(a_scale_ptr))
    n_ok = offs_n < n_end
    if UP:
        acc = tl.maximum(acc, 0.0)
        h = quantize_e4m3(acc * acc, tl.math.div_rn(1.0, tl.load(c_scale_ptr)), INTERPRET)
        c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, h.to(c_ptr.dtype.element_ty), mask=n_ok[None, :])
    else:
        weight = tl.load(topk_w_ptr + ids, mask=valid, other=0.0)
        acc = acc * weight[:, None]
        c_ptrs = c_ptr + ids[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])


def _gemm(a, w, w_scale, a_scale, c_scale, c, routed, up, cfg):
    """One of the op's two GEMMs. routed = (sorted_ids, block_expert, topk_w, A, k)."""
    sorted_ids, block_expert, topk_w, num_valid, top_k = routed
    E, N, K = w.shape
    num_blocks_m = block_expert.numel()
    tma, a_arg = cfg.tma, a
    if tma and not up:
        a_arg = TensorDescriptor.from_tensor(a, [cfg.block_m, cfg.block_k])
    for n_start, n_end, block_n in column_launches(N, cfg.block_n, cfg.split_tail):
        grid = (num_blocks_m * triton.cdiv(n_end - n_start, block_n),)
        w_arg = TensorDescriptor.from_tensor(w.view(E * N, K), [block_n, cfg.block_k]) if tma else w
        _moe_fp8_gemm_kernel[grid](
            a_arg, w_arg, c, sorted_ids, block_expert, topk_w, w_scale, a_scale, c_scale,
            num_valid, n_start, n_end, N, K, num_blocks_m,
            a.stride(0), w.stride(0), w.stride(1), c.stride(0), cfg.group_m or num_blocks_m,
            TOP_K=top_k, UP=up, TMA=tma, INTERPRET=interpreting(), EVEN_K=K % cfg.block_k == 0,
            FAST_ACCUM=cfg.fast_accum,
            BLOCK_M=cfg.block_m, BLOCK_N=block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip


def pick_config(num_tokens, top_k, num_experts, dims, device):
    """GemmConfig of both GEMMs: the decode one when prefill tiles would be mostly padding.
    dims = (D, inner), the two GEMMs' K: TMA where the device and both allow it."""
    if interpreting():
        return _INTERPRET
    if num_tokens * top_k < _DECODE_ROWS_PER_EXPERT * num_experts:
        return _DECODE
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    return replace(_PREFILL, tma=hopper and all(k % 16 == 0 for k in dims))


def _moe_experts_fp8_launch(
    x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights,
    topk_ids, config,
):  # fmt: skip
    """x [T, D] bf16; up [E, I, D] e4m3; down [E, D, I] e4m3; up_scale, down_scale [E] fp32;
    up_input_scale, down_input_scale fp32 0-d; topk_weights [T, k] fp32; topk_ids [T, k] int32."""
    T, D = x.shape
    E, inner, _ = up.shape
    k = topk_ids.shape[1]
    assert up.shape == (E, inner, D) and down.shape == (E, D, inner), (up.shape, down.shape)
    assert up.dtype == down.dtype == torch.float8_e4m3fn, (up.dtype, down.dtype)
    assert up.stride(2) == 1 and down.stride(2) == 1, "expert weights must be row-major"
    assert up_scale.shape == (E,) and down_scale.shape == (E,), (up_scale.shape, E)
    assert up_input_scale.numel() == 1 and down_input_scale.numel() == 1
    scales = (up_scale, down_scale, up_input_scale, down_input_scale)
    assert all(s.dtype == torch.float32 for s in scales), [s.dtype for s in scales]
    assert topk_ids.shape == (T, k) and topk_ids.dtype == torch.int32
    assert topk_weights.shape == (T, k) and topk_weights.dtype == torch.float32
    x = x.contiguous()
    cfg = config or pick_config(T, k, E, (D, inner), x.device)

    sorted_ids, block_expert, _ = moe_align(topk_ids, E, cfg.block_m)
    routed = (sorted_ids, block_expert, topk_weights.contiguous(), T * k, k)
    h = torch.empty(sorted_ids.numel(), inner, device=x.device, dtype=torch.float8_e4m3fn)
    y = torch.empty(T * k, D, device=x.device, dtype=x.dtype)  # [A, D]
    xq = fp8_quantize(x, up_input_scale)
    _gemm(xq, up, up_scale, up_input_scale, down_input_scale, h, routed, True, cfg)
    _gemm(h, down, down_scale, down_input_scale, down_input_scale, y, routed, False, cfg)
    return moe_sum(y, k)


def moe_experts_fp8(
    x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights,
    topk_ids, config: Fp8GemmConfig | None = None,
):  # fmt: skip
    """Routed experts of the FP8 checkpoint (shared expert not included).

    x [T, D] bf16; up [E, I, D] e4m3; down [E, D, I] e4m3 (nn.Linear layout); up_scale,
    down_scale [E] fp32 (weight scales); up_input_scale, down_input_scale fp32 0-d (static
    activation scales, one per MoE); topk_weights [T, k] fp32; topk_ids [T, k] int32.
    Returns out [T, D] in x's dtype. `config` None picks the tiling by size (pick_config).
    """
    return _moe_experts_fp8_launch(
        x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights,
        topk_ids, config,
    )  # fmt: skip


def moe_experts_fp8_ref(
    x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights, topk_ids
):
    """Plain PyTorch twin of `moe_experts_fp8`: a loop over the experts that got tokens.

    Same arguments. Returns [T, D] in x's dtype; each assignment's output is rounded to x's
    dtype before the sum over k, as the kernel stores it.
    """
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    xq = quantize_fp8(x, up_input_scale).float()
    flat_ids = topk_ids.reshape(-1).long()
    for e in torch.unique(flat_ids).tolist():
        assign = (flat_ids == e).nonzero().squeeze(1)  # [n] indices into T*k
        tokens = assign // topk_ids.shape[1]
        h = xq[tokens] @ up[e].float().t() * (up_scale[e] * up_input_scale)
        hq = quantize_fp8(torch.relu(h).square(), down_input_scale).float()
        y = hq @ down[e].float().t() * (down_scale[e] * down_input_scale)
        y = y * topk_weights.reshape(-1)[assign, None]
        out.index_add_(0, tokens, y.to(x.dtype).float())
    return out.to(x.dtype)
