"""Efficient Video Sampling retention mask (docs/model.md §3.3).

Letters: N tubelets, R rows, C cols (post-pixel-shuffle grid), M = R·C tokens per tubelet,
D embedding width. The kernel computes each token's dissimilarity to the same position in
the previous tubelet, 1 − cos(e[t], e[t−1]), in fp32; tubelet 0 scores 255 so it is always
kept whole. Selection (stable descending sort, keep the first K) runs in torch.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

EPS = 1e-8  # torch.cosine_similarity's default: norms are clamped to at least this


@triton.jit
def _evs_kernel(emb_ptr, dis_ptr, M, D, eps, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0) + 1  # tubelet 0 is scored by the launcher
    tok = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    tok_mask = tok < M
    cur = emb_ptr + (t * M + tok).to(tl.int64)[:, None] * D
    prev = emb_ptr + ((t - 1) * M + tok).to(tl.int64)[:, None] * D
    dot = tl.zeros((BLOCK_M,), dtype=tl.float32)
    nx = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ny = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = tok_mask[:, None] & (cols < D)[None, :]
        x = tl.load(cur + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = tl.load(prev + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dot += tl.sum(x * y, axis=1)
        nx += tl.sum(x * x, axis=1)
        ny += tl.sum(y * y, axis=1)
    cos = dot / (tl.maximum(tl.sqrt(nx), eps) * tl.maximum(tl.sqrt(ny), eps))
    tl.store(dis_ptr + t * M + tok, 1.0 - cos, mask=tok_mask)


def _evs_launch(emb: torch.Tensor) -> torch.Tensor:
    """emb[N, R, C, D] -> dissimilarity [N, R, C] fp32 (255 for tubelet 0)."""
    assert emb.dim() == 4, "emb must be [n_tubelets, rows, cols, D]"
    N, R, C, D = emb.shape
    M = R * C
    emb = emb.contiguous()
    dis = torch.empty((N, R, C), dtype=torch.float32, device=emb.device)
    dis[0] = 255.0
    if N > 1 and M > 0:
        BLOCK_M = 16
        BLOCK_D = min(256, triton.next_power_of_2(D))
        _evs_kernel[(N - 1, triton.cdiv(M, BLOCK_M))](
            emb, dis, M, D, EPS, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D
        )
    return dis


def _select(dis: torch.Tensor, q: float) -> torch.Tensor:
    """Keep max(M, int(N·M·(1 − q))) tokens with the highest scores; ties keep the earlier token."""
    N, R, C = dis.shape
    keep = max(R * C, int(N * R * C * (1 - q)))
    order = torch.argsort(dis.reshape(-1), descending=True, stable=True)
    mask = torch.zeros(N * R * C, dtype=torch.bool, device=dis.device)
    mask[order[:keep]] = True
    return mask.view(N, R, C)


def evs_keep_mask(emb: torch.Tensor, q: float) -> torch.Tensor:
    """emb[N, R, C, D] post-projector video embeddings, pruning rate q -> bool mask [N, R, C]."""
    return _select(_evs_launch(emb), q)


def evs_dissimilarity_ref(emb: torch.Tensor) -> torch.Tensor:
    """emb[N, R, C, D] -> [N, R, C] fp32, the kernel's scores in plain torch."""
    x = emb.float()
    dis = 1.0 - F.cosine_similarity(x[1:], x[:-1], dim=-1, eps=EPS)
    return torch.cat([torch.full_like(x[:1, ..., 0], 255.0), dis])


def evs_keep_mask_ref(emb: torch.Tensor, q: float) -> torch.Tensor:
    """Same signature and result as evs_keep_mask, in plain PyTorch (CPU and GPU)."""
    return _select(evs_dissimilarity_ref(emb), q)
