"""C-RADIOv4-H vision tower (docs/model.md §2.1, §2.2, §3.2) and the visual encoding API.

API (the omni model calls these; `vit` is mounted as `vision_model.radio_model`, `mlp1` as `mlp1`):

    RadioViT(cfg).forward(seqs[N, 10 + h·w, D]) -> [N, h·w, D]    blocks, prefix stripped
    RadioViT.embed(patches[N, h·w, P], grid, video) -> [N, 10 + h·w, D]
    encode_visual(vit, mlp1, items, vit_tokens, resize_bytes) -> one tensor per item, in order:
        ImageItem -> [ph·pw/4, 2688]
        VideoItem -> [n_tubelets, ph/2, pw/2, 2688]   (the 4-D layout EVS needs, docs/model.md §3.3)
    encode_images(vit, mlp1, images), encode_video(vit, mlp1, video): the same for one kind.

A video's uint8 tubelets are resized and normalised here, on the ViT's device
(`media.resize.video_pixels`), so the CPU media pool only decodes.

Sequences of equal length (same patch count, whatever the kind or aspect) share one batched
forward with no mask, so a video's tubelets and equal-sized images cost one SDPA call per block;
different lengths run as separate forwards. Each item attends only within itself (docs/model.md
§2.1). A forward takes at most `vit_tokens` tokens (the engine's memory plan sets it): a long
video streams through in pieces of tubelets, so its length only sets the size of its output.
Parameters are named after the checkpoint keys below `vision_model.radio_model.` (docs/model.md
§6.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from media.items import ImageItem, VideoItem
from media.resize import PATCH, video_pixels
from workers.model.config import VisionConfig
from workers.model.host_copy import host_to_device
from workers.model.pixel_shuffle import pixel_shuffle

# N sequences, L tokens, D width, H heads, P patch vector.


class _ClsToken(nn.Module):
    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(num, dim))


class PatchGenerator(nn.Module):
    """Linear patch/tubelet embedders, CPE position embedding and the prefix tokens."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.embedder = nn.Linear(cfg.patch_dim, d, bias=False)
        self.video_embedder = nn.Linear(cfg.temporal_patch_size * cfg.patch_dim, d, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid * cfg.pos_grid, d))
        self.cls_token = _ClsToken(cfg.num_prefix_tokens, d)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """CPE for an h×w grid -> [h·w, D]: the table bilinearly resized to m×m, m = max(h, w),
        then cropped top-left (m ≥ h, w, so the crop is exact).

        Only the crop is computed (`_resized_crop`): a long thin grid (m in the thousands)
        would need an m×m×D table in fp32, far more than the grid's own patches.
        """
        h, w = grid
        g = self.cfg.pos_grid
        table = self.pos_embed.reshape(g, g, -1)
        if max(h, w) == g:
            return table[:h, :w].reshape(h * w, -1)
        return _resized_crop(table, max(h, w), h, w).reshape(h * w, -1)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], video: bool) -> torch.Tensor:
        """patches [N, h·w, P] (P = 768 image, 1536 tubelet) -> [N, prefix + h·w, D]."""
        proj = self.video_embedder if video else self.embedder
        x = proj(patches) + self.position_embedding(grid)
        prefix = self.cls_token.token.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([prefix, x], dim=1)


def _source_taps(out: int, size: int, n: int, device) -> tuple[torch.Tensor, ...]:
    """Bilinear taps (align_corners=False) of the first n of `out` positions resized from
    `size`: (lower index, upper index, lower weight, upper weight), in fp32 as `F.interpolate`
    computes them; built on the device (no host copy, no sync)."""
    scale = torch.full((), size, dtype=torch.float32, device=device) / out
    src = ((torch.arange(n, dtype=torch.float32, device=device) + 0.5) * scale - 0.5).clamp(min=0)
    lo = src.long()
    w_hi = src - lo
    return lo, (lo + 1).clamp(max=size - 1), 1 - w_hi, w_hi


# fp32 values of one block of the resized crop (its few temporaries stay ≈ 40 MB at most).
POS_BLOCK_VALUES = 1 << 21


def _resized_crop(table: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
    """table [g, g, D] -> [h, w, D] (table's dtype): the top-left h×w of its bilinear resize
    to m×m, computed in fp32.

    Along the longer side first, then the shorter one (`F.interpolate` weighs columns first:
    a tall grid differs from it in the last bit), a block of lines at a time: only the table
    lines a block reads go to fp32, so the work is O(min(h, w)·(g + max(h, w))·D), never
    m²·D, and the fp32 temporaries stay within a few POS_BLOCK_VALUES.
    """
    if h > w:
        return _resized_crop(table.transpose(0, 1), m, w, h).transpose(0, 1)
    g, dev = table.shape[0], table.device
    r_lo, r_hi, r_wlo, r_whi = _source_taps(m, g, h, dev)
    c_lo, c_hi, c_wlo, c_whi = _source_taps(m, g, w, dev)

    def columns(rows: torch.Tensor) -> torch.Tensor:  # [k] table rows -> [k, w, D] fp32
        t = table[rows].float()
        return t[:, c_lo] * c_wlo[None, :, None] + t[:, c_hi] * c_whi[None, :, None]

    out = torch.empty(h, w, table.shape[-1], dtype=table.dtype, device=dev)
    step = max(1, POS_BLOCK_VALUES // (max(g, w) * table.shape[-1]))
    for a in range(0, h, step):
        b = slice(a, a + step)
        lo = columns(r_lo[b]) * r_wlo[b, None, None]
        out[b] = lo + columns(r_hi[b]) * r_whi[b, None, None]
    return out


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        # fused qkv: output channels are [q | k | v], each split into heads
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # [N, H, L, d]
        return self.proj(o.transpose(1, 2).reshape(n, length, d))


class Mlp(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_size)
        self.fc2 = nn.Linear(cfg.mlp_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN ViT block; no layer-scale (the checkpoint's is identity)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Backbone(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_generator = PatchGenerator(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))


class RadioViT(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Backbone(cfg)

    def embed(self, patches: torch.Tensor, grid: tuple[int, int], video: bool) -> torch.Tensor:
        return self.model.patch_generator(patches, grid, video)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [N, prefix + L, D] (equal lengths) -> features [N, L, D]; no final norm."""
        for block in self.model.blocks:
            seqs = block(seqs)
        return seqs[:, self.cfg.num_prefix_tokens :]


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, C, h·p, w·p] -> [N, h·w, C·p·p], patches row-major, each vector in (c, y, x) order.

    A tubelet enters with its two frames stacked on C (frame-major), giving (t, c, y, x).
    """
    n, c, hp, wp = pixels.shape
    h, w = hp // patch, wp // patch
    x = pixels.reshape(n, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, h * w, c * patch * patch)


# Tokens per ViT forward when the caller gives no budget (the engine's comes from its memory
# plan). 32 tubelets of 1024 patches already run at ≈ 470 TFLOP/s on an H200; bigger
# batches only add activation memory (the MLP's 5120-wide intermediate).
MAX_VIT_TOKENS = 65536
# GPU bytes a resize slice may hold when the caller gives no budget (one frame at least).
RESIZE_SLICE_BYTES = 1 << 30
# The projector runs on at most this share of a forward's tokens at once: its 20480-wide
# hidden layer (three copies alive at ReLU²) then stays below the ViT MLP's peak.
PROJECTOR_SHARE = 8


def resize_frame_bytes(frame: tuple[int, int], grid: tuple[int, int]) -> int:
    """GPU bytes resizing one decoded H×W frame to `grid` holds (resize.video_pixels): the
    uint8 frame and its planar copy, its float32 copy; the float32 output and the
    normalisation's two temporaries."""
    h, w = frame
    out = 3 * PATCH * grid[0] * PATCH * grid[1]
    return 3 * h * w * (1 + 1 + 4) + out * 3 * 4


def encode_visual(
    vit: RadioViT,
    mlp1: nn.Module,
    items: list[ImageItem | VideoItem],
    vit_tokens: int = MAX_VIT_TOKENS,
    resize_bytes: int = RESIZE_SLICE_BYTES,
) -> list[torch.Tensor]:
    """Encode images and videos together; see the module docstring for the output shapes.

    Work streams through in pieces: each forward takes whole sequences (an image, or some
    tubelets of a video) of one length, at most `vit_tokens` tokens (one sequence at least),
    resizing and embedding only those and writing its projected rows into the outputs. So
    the GPU holds one forward's activations and the outputs, whatever the items' lengths;
    a video's frames cross to the device a resize slice (`resize_bytes`) at a time.
    """
    w = vit.model.patch_generator.embedder.weight
    width = mlp1[-1].out_features
    outs = [_output(item, width, w) for item in items]
    prefix = vit.cfg.num_prefix_tokens
    rows = max(1, vit_tokens // PROJECTOR_SHARE // 4)  # projector rows at once (4 patches each)
    by_length: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_length.setdefault(item.grid[0] * item.grid[1], []).append(i)
    for length, idx in by_length.items():
        per_forward = max(1, vit_tokens // (prefix + length))
        for piece in _pieces(idx, [_sequences(items[i]) for i in idx], per_forward):
            seqs = torch.cat([_embed(vit, items[i], a, b, resize_bytes) for i, a, b in piece])
            feats = vit(seqs)
            del seqs
            for (i, a, b), f in zip(piece, feats.split([b - a for _, a, b in piece]), strict=True):
                h, gw = items[i].grid
                shuffled = pixel_shuffle(f.reshape(b - a, h, gw, -1))  # [n, h/2, w/2, 4D]
                src, dst = shuffled.reshape(-1, shuffled.shape[-1]), outs[i][a:b].view(-1, width)
                for r in range(0, src.shape[0], rows):
                    dst[r : r + rows] = mlp1(src[r : r + rows])
    return [o[0] if isinstance(item, ImageItem) else o for item, o in zip(items, outs, strict=True)]


def _sequences(item: ImageItem | VideoItem) -> int:
    if isinstance(item, VideoItem):
        return item.num_tubelets
    if isinstance(item, ImageItem):
        return 1
    raise TypeError(f"not a visual item: {type(item).__name__}")


def _output(item: ImageItem | VideoItem, width: int, like: torch.Tensor) -> torch.Tensor:
    """[sequences, rows, width]: an image's [1, ph·pw/4, out], a video's [n, ph/2, pw/2, out]."""
    h, w = item.grid
    shape = (1, h * w // 4) if isinstance(item, ImageItem) else (_sequences(item), h // 2, w // 2)
    return torch.empty(*shape, width, device=like.device, dtype=like.dtype)


def _pieces(idx: list[int], counts: list[int], cap: int) -> list[list[tuple[int, int, int]]]:
    """Items `idx` with `counts` sequences each -> forwards of at most `cap` sequences, each a
    list of (item, first, end) runs, in order."""
    pieces, cur, n = [], [], 0
    for i, count in zip(idx, counts, strict=True):
        a = 0
        while a < count:
            take = min(count - a, cap - n)
            cur.append((i, a, a + take))
            a, n = a + take, n + take
            if n == cap:
                pieces.append(cur)
                cur, n = [], 0
    return pieces + ([cur] if cur else [])


def _embed(
    vit: RadioViT, item: ImageItem | VideoItem, a: int, b: int, resize_bytes: int
) -> torch.Tensor:
    """Sequences [a, b) of `item` -> [b - a, prefix + h·w, D]."""
    w = vit.model.patch_generator.embedder.weight
    video = isinstance(item, VideoItem)
    if video:
        pixels = _video_pixels(item, a, b, w, resize_bytes)  # [n, T·3, H, W]
    else:
        pixels = item.pixels.unsqueeze(0).to(device=w.device, dtype=w.dtype)
    return vit.embed(patchify(pixels, vit.cfg.patch_size), item.grid, video)


def _video_pixels(
    item: VideoItem, a: int, b: int, like: torch.Tensor, resize_bytes: int
) -> torch.Tensor:
    """uint8 tubelets [a, b) of [n, 2, 3, H, W] -> model pixels [b - a, 2·3, 16·ph, 16·pw]
    (like's dtype).

    The decoded frames cross to the device as uint8 a slice of frames at a time, and are
    resized there; a slice holds at most `resize_bytes` (`resize_frame_bytes` a frame).
    """
    ph, pw = item.grid
    frames = item.tubelets[a:b].flatten(0, 1)  # [f, 3, H, W], a view
    f, c = frames.shape[:2]
    out = torch.empty(f, c, PATCH * ph, PATCH * pw, device=like.device, dtype=like.dtype)
    step = max(1, resize_bytes // resize_frame_bytes(frames.shape[2:], item.grid))
    for s in range(0, f, step):
        u8 = host_to_device(frames[s : s + step], like.device).unsqueeze(1)  # [k, 1, 3, H, W]
        out[s : s + step] = video_pixels(u8, item.grid).flatten(0, 1)
    return out.view(b - a, -1, *out.shape[2:])


def encode_images(vit: RadioViT, mlp1: nn.Module, images: list[ImageItem]) -> list[torch.Tensor]:
    """-> per image [ph·pw/4, out]."""
    return encode_visual(vit, mlp1, images)


def encode_video(vit: RadioViT, mlp1: nn.Module, video: VideoItem) -> torch.Tensor:
    """-> [n_tubelets, ph/2, pw/2, out]."""
    return encode_visual(vit, mlp1, [video])[0]
