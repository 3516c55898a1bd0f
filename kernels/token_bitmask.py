"""Grammar token masks applied to logits (constrained decoding, workers/engine/grammar.py).

Letters: B logits rows, V vocab (logits width), N masked rows, W int32 words per mask row.
Bit j of word w allows token 32·w + j (llguidance's bitmask layout). A masked row's disallowed
tokens, and tokens past 32·W (beyond the tokenizer's vocabulary), become -inf; rows not named
in `rows` are left alone. The kernel only writes: where a bit is set the logit stays as it is.
"""

import torch
import triton
import triton.language as tl

BLOCK_V = 1024


@triton.jit
def _mask_logits_kernel(logits_ptr, bits_ptr, rows_ptr, V, W, stride_l, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(rows_ptr + i).to(tl.int64)
    word_idx = cols // 32
    in_mask = (cols < V) & (word_idx < W)
    words = tl.load(bits_ptr + i.to(tl.int64) * W + word_idx, mask=in_mask, other=0)
    allowed = (words >> (cols % 32)) & 1
    drop = (cols < V) & (allowed == 0)
    ninf = tl.full([BLOCK], float("-inf"), tl.float32)
    tl.store(logits_ptr + row * stride_l + cols, ninf, mask=drop)


def _mask_logits_launch(logits: torch.Tensor, bits: torch.Tensor, rows: torch.Tensor) -> None:
    assert logits.dim() == 2 and logits.stride(1) == 1, "logits must be [B, V], rows contiguous"
    assert bits.dim() == 2 and bits.dtype == torch.int32, "bits must be int32 [N, W]"
    assert rows.shape == (bits.shape[0],), "one logits row index per mask row"
    N, W = bits.shape
    V = logits.shape[1]
    if N == 0:
        return
    bits = bits.contiguous()
    grid = (N, triton.cdiv(V, BLOCK_V))
    _mask_logits_kernel[grid](logits, bits, rows, V, W, logits.stride(0), BLOCK=BLOCK_V)


def mask_logits(logits: torch.Tensor, bits: torch.Tensor, rows: torch.Tensor) -> None:
    """In place: logits [B, V] fp32; bits [N, W] int32; rows [N] int64 (row of logits per mask)."""
    _mask_logits_launch(logits, bits, rows)


def mask_logits_ref(logits: torch.Tensor, bits: torch.Tensor, rows: torch.Tensor) -> None:
    """Same signature and effect as mask_logits, in plain PyTorch."""
    V = logits.shape[1]
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    allowed = ((bits[:, :, None] >> shifts) & 1).bool().flatten(1)[:, :V]  # [N, min(32W, V)]
    keep = torch.zeros(bits.shape[0], V, dtype=torch.bool, device=bits.device)
    keep[:, : allowed.shape[1]] = allowed
    logits[rows] = logits[rows].masked_fill(~keep, float("-inf"))
