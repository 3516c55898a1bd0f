"""C-RADIOv4-H vision tower (docs/model.md §2.1, §2.2, §3.2) and the visual encoding API.

API (the omni model calls these; `vit` is mounted as `vision_model.radio_model`, `mlp1` as `mlp1`):

    RadioViT(cfg).forward(seqs[N, 10 + h·w, D]) -> [N, h·w, D]    blocks, prefix stripped
    RadioViT.embed(patches[N, h·w, P], grid, video) -> [N, 10 + h·w, D]
    encode_visual(vit, mlp1, items)  -> one tensor per item, in order:
        ImageItem -> [ph·pw/4, 2688]
        VideoItem -> [n_tubelets, ph/2, pw/2, 2688]   (the 4-D layout EVS needs, docs/model.md §3.3)
    encode_images(vit, mlp1, images), encode_video(vit, mlp1, video): the same for one kind.

A video's uint8 tubelets are resized and normalised here, on the ViT's device
(`workers.media.resize.video_pixels`), so the CPU media pool only decodes.

Sequences of equal length (same patch count, whatever the kind or aspect) share one batched
forward with no mask, so a video's tubelets and equal-sized images cost one SDPA call per block;
different lengths run as separate forwards. Each item attends only within itself (docs/model.md
§2.1).
Parameters are named after the checkpoint keys below `vision_model.radio_model.` (docs/model.md
§6.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.media.items import ImageItem, VideoItem
from workers.media.resize import PATCH, video_pixels
from workers.model.config import VisionConfig
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
        """CPE for an h×w grid -> [h·w, D]: square resize to max(h, w), then crop top-left."""
        h, w = grid
        g = self.cfg.pos_grid
        table = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        m = max(h, w)
        if m != g:
            table = F.interpolate(table, size=(m, m), mode="bilinear", align_corners=False)
        # m ≥ h, w always, so the crop is exact and no second resize is needed.
        table = table[:, :, :h, :w]
        return table.flatten(2)[0].t().to(self.pos_embed.dtype)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], video: bool) -> torch.Tensor:
        """patches [N, h·w, P] (P = 768 image, 1536 tubelet) -> [N, prefix + h·w, D]."""
        proj = self.video_embedder if video else self.embedder
        x = proj(patches) + self.position_embedding(grid)
        prefix = self.cls_token.token.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([prefix, x], dim=1)


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


def _embed_item(vit: RadioViT, item: ImageItem | VideoItem) -> torch.Tensor:
    w = vit.model.patch_generator.embedder.weight
    if isinstance(item, ImageItem):
        pixels = item.pixels.unsqueeze(0).to(device=w.device, dtype=w.dtype)
    elif isinstance(item, VideoItem):
        pixels = _video_pixels(item, w)  # [n, T·3, H, W]
    else:
        raise TypeError(f"not a visual item: {type(item).__name__}")
    return vit.embed(patchify(pixels, vit.cfg.patch_size), item.grid, isinstance(item, VideoItem))


# Decoded float32 values per resize slice (1 GiB): a long 4K chunk resized at once would
# hold tens of GB of float frames on the GPU.
RESIZE_SLICE_VALUES = 1 << 28


def _video_pixels(item: VideoItem, like: torch.Tensor) -> torch.Tensor:
    """uint8 tubelets [n, 2, 3, H, W] -> model pixels [n, 2·3, 16·ph, 16·pw] (like's dtype).

    The decoded frames cross to the device as uint8 and are resized there, a slice of
    tubelets at a time so only the slice's float intermediates exist at once.
    """
    u8 = item.tubelets.to(like.device)
    n, t, c, h, w = u8.shape
    ph, pw = item.grid
    out = torch.empty(n, t * c, PATCH * ph, PATCH * pw, device=like.device, dtype=like.dtype)
    step = max(1, RESIZE_SLICE_VALUES // (t * c * h * w))
    for a in range(0, n, step):
        out[a : a + step] = video_pixels(u8[a : a + step], item.grid).flatten(1, 2)
    return out


# Tokens per ViT forward. 32 tubelets of 1024 patches already run at ≈ 470 TFLOP/s on an
# H200; bigger batches only add activation memory (the MLP's 5120-wide intermediate).
MAX_VIT_TOKENS = 65536


def _groups(idx: list[int], tokens: list[int], cap: int) -> list[list[int]]:
    """Consecutive runs of `idx` of at most `cap` tokens (an item over the cap runs alone)."""
    groups, cur, n = [], [], 0
    for i, t in zip(idx, tokens, strict=True):
        if cur and n + t > cap:
            groups.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += t
    return groups + [cur]


def encode_visual(
    vit: RadioViT, mlp1: nn.Module, items: list[ImageItem | VideoItem]
) -> list[torch.Tensor]:
    """Encode images and videos together; see the module docstring for the output shapes."""
    seqs = [_embed_item(vit, item) for item in items]
    feats: list[torch.Tensor | None] = [None] * len(items)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_length.setdefault(s.shape[1], []).append(i)
    for length, idx in by_length.items():
        for group in _groups(idx, [seqs[i].shape[0] * length for i in idx], MAX_VIT_TOKENS):
            out = vit(torch.cat([seqs[i] for i in group]))
            for i, part in zip(group, out.split([seqs[i].shape[0] for i in group]), strict=True):
                feats[i] = part
    results = []
    for item, f in zip(items, feats, strict=True):
        h, w = item.grid
        emb = mlp1(pixel_shuffle(f.reshape(f.shape[0], h, w, -1)))  # [N, h/2, w/2, out]
        results.append(emb.reshape(-1, emb.shape[-1]) if isinstance(item, ImageItem) else emb)
    return results


def encode_images(vit: RadioViT, mlp1: nn.Module, images: list[ImageItem]) -> list[torch.Tensor]:
    """-> per image [ph·pw/4, out]."""
    return encode_visual(vit, mlp1, images)


def encode_video(vit: RadioViT, mlp1: nn.Module, video: VideoItem) -> torch.Tensor:
    """-> [n_tubelets, ph/2, pw/2, out]."""
    return encode_visual(vit, mlp1, [video])[0]
