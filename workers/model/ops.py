"""The one place where the model picks its kernels.

Every op of the kernel API (kernels/*.py) is dispatched here: the Triton op when the input
lives on a CUDA device, the plain-PyTorch `_ref` twin otherwise. Both have the same
signature and semantics, so the model code never branches on the backend.

`reference()` forces the `_ref` path on CUDA too, for tests that compare the two paths
on the same GPU. It is a context variable, so it is scoped and restored on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from kernels import attention as _attention
from kernels import causal_conv1d as _conv
from kernels import evs as _evs
from kernels import fp8_linear as _fp8_linear
from kernels import moe_experts as _experts
from kernels import moe_experts_fp8 as _experts_fp8
from kernels import moe_experts_nvfp4 as _experts_nvfp4
from kernels import moe_routing as _routing
from kernels import rmsnorm as _rmsnorm
from kernels import ssd_scan as _ssd
from kernels import ssm_state_update as _ssm_update
from kernels import token_bitmask as _bitmask

_FORCE_REFERENCE: ContextVar[bool] = ContextVar("omnibatch_force_reference", default=False)


@contextmanager
def reference() -> Iterator[None]:
    """Run every op through its PyTorch reference, on any device, inside this block."""
    token = _FORCE_REFERENCE.set(True)
    try:
        yield
    finally:
        _FORCE_REFERENCE.reset(token)


def _triton(t: torch.Tensor) -> bool:
    return t.is_cuda and not _FORCE_REFERENCE.get()


def rmsnorm(x, weight, eps, residual=None, out_scale=None):
    op = _rmsnorm.rmsnorm if _triton(x) else _rmsnorm.rmsnorm_ref
    return op(x, weight, eps, residual, out_scale)


def gated_group_rmsnorm(y, z, weight, group_size, eps, out_scale=None):
    op = _rmsnorm.gated_group_rmsnorm if _triton(y) else _rmsnorm.gated_group_rmsnorm_ref
    return op(y, z, weight, group_size, eps, out_scale)


def ssd_scan(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states, chunk_size):
    op = _ssd.ssd_scan if _triton(x) else _ssd.ssd_scan_ref
    return op(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states, chunk_size=chunk_size)


def ssm_state_update(state, x, dt, A, B, C, D, dt_bias, slots):
    op = _ssm_update.ssm_state_update if _triton(x) else _ssm_update.ssm_state_update_ref
    return op(state, x, dt, A, B, C, D, dt_bias, slots)


def causal_conv1d_varlen(x, weight, bias, cu_seqlens, conv_state, slots, has_initial_state):
    op = _conv.causal_conv1d_varlen if _triton(x) else _conv.causal_conv1d_varlen_ref
    return op(x, weight, bias, cu_seqlens, conv_state, slots, has_initial_state)


def causal_conv1d_update(x, conv_state, weight, bias, slots):
    op = _conv.causal_conv1d_update if _triton(x) else _conv.causal_conv1d_update_ref
    return op(x, conv_state, weight, bias, slots)


def moe_route(hidden, gate_weight, correction_bias, top_k, routed_scaling_factor):
    op = _routing.moe_route if _triton(hidden) else _routing.moe_route_ref
    return op(hidden, gate_weight, correction_bias, top_k, routed_scaling_factor)


def moe_experts(x, up, down, topk_weights, topk_ids):
    op = _experts.moe_experts if _triton(x) else _experts.moe_experts_ref
    return op(x, up, down, topk_weights, topk_ids)


def moe_experts_fp8(
    x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights, topk_ids
):
    op = _experts_fp8.moe_experts_fp8 if _triton(x) else _experts_fp8.moe_experts_fp8_ref
    return op(
        x, up, down, up_scale, down_scale, up_input_scale, down_input_scale, topk_weights, topk_ids
    )


def moe_experts_nvfp4(x, up, down, topk_weights, topk_ids):
    op = _experts_nvfp4.moe_experts_nvfp4 if _triton(x) else _experts_nvfp4.moe_experts_nvfp4_ref
    return op(x, up, down, topk_weights, topk_ids)


def fp8_linear(x, weight, weight_scale, input_scale, relu2_out_scale=None):
    op = _fp8_linear.fp8_linear if _triton(x) else _fp8_linear.fp8_linear_ref
    return op(x, weight, weight_scale, input_scale, relu2_out_scale)


def fp8_quantize(x, scale):
    op = _fp8_linear.fp8_quantize if _triton(x) else _fp8_linear.fp8_quantize_ref
    return op(x, scale)


def attention_prefill(
    q, k_pool, v_pool, req_to_token, slots, cu_seqlens, context_lens, scale, k_scale=None,
    v_scale=None,
):  # fmt: skip
    op = _attention.attention_prefill if _triton(q) else _attention.attention_prefill_ref
    return op(
        q, k_pool, v_pool, req_to_token, slots, cu_seqlens, context_lens, scale, k_scale, v_scale
    )


def attention_decode(
    q, k_pool, v_pool, req_to_token, slots, seq_lens, scale, k_scale=None, v_scale=None
):
    op = _attention.attention_decode if _triton(q) else _attention.attention_decode_ref
    return op(q, k_pool, v_pool, req_to_token, slots, seq_lens, scale, k_scale, v_scale)


def evs_keep_mask(emb, q):
    op = _evs.evs_keep_mask if _triton(emb) else _evs.evs_keep_mask_ref
    return op(emb, q)


def mask_logits(logits, bits, rows):
    op = _bitmask.mask_logits if _triton(logits) else _bitmask.mask_logits_ref
    return op(logits, bits, rows)
