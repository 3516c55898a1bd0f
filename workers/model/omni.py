"""The composite Omni model and the prompt-embedding builder (docs/model.md §3.3–§3.5, §5.1).

Letters: T prompt tokens, D LLM width, n tubelets, r×c post-shuffle grid.

`OmniModel` holds the LLM and both towers with their projectors, mounted so that a
published key maps to one submodule prefix (see `loader.PREFIXES`). `build_prompt_embeds`
turns one request's rendered prompt and media items into the [T, D] embeddings the LLM
prefills: expand markers, tokenize, embed, replace the rows at `<image>` / `<so_embedding>`
positions by the encoders' outputs, then drop the video tokens EVS prunes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from media.items import AudioItem, ImageItem, VideoItem
from workers.model import ops
from workers.model.audio import MAX_AUDIO_FRAMES, AudioEncoder, encode_audios
from workers.model.config import OmniConfig
from workers.model.expand import expand_prompt
from workers.model.host_copy import host_to_device
from workers.model.nemotron_h import NemotronH
from workers.model.projectors import SoundProjector, VisionProjector
from workers.model.quant import QuantPlan
from workers.model.vision import MAX_VIT_TOKENS, RESIZE_SLICE_BYTES, RadioViT, encode_visual


@dataclass(frozen=True)
class PromptStats:
    prompt_tokens: int  # after EVS: what the LLM prefills
    video_tokens_before_evs: int
    video_tokens_after_evs: int
    image_tokens: int
    audio_tokens: int

    @property
    def encoder_rows(self) -> int:
        """Rows the encoders output for the prompt (before EVS)."""
        return self.video_tokens_before_evs + self.image_tokens + self.audio_tokens


@dataclass(frozen=True)
class EncodePieces:
    """How much of the encoders' work one forward (or resize slice) takes: bounds what the
    encoders hold on the GPU at once (the engine's memory plan sizes them)."""

    vit_tokens: int = MAX_VIT_TOKENS  # ViT tokens per forward (one sequence at least)
    audio_frames: int = MAX_AUDIO_FRAMES  # mel frames per audio forward (one clip at least)
    resize_bytes: int = RESIZE_SLICE_BYTES  # GPU bytes of a video resize slice (one frame at least)


class OmniModel(nn.Module):
    def __init__(
        self,
        config: OmniConfig,
        device=None,
        dtype: torch.dtype = torch.float32,
        plan: QuantPlan | None = None,
    ):
        """`plan`: the LLM's quantized linears (workers/model/quant.py); the towers and
        projectors are unquantized in every published checkpoint."""
        super().__init__()
        self.config = config
        self.llm = NemotronH(config.llm, device=device, dtype=dtype, plan=plan)
        d = config.llm.hidden_size
        with torch.device(device or "cpu"):
            self.vit = RadioViT(config.vision)
            self.mlp1 = VisionProjector(
                config.vision_feature_size, config.projector_hidden_size, d, config.llm.norm_eps
            )
            self.sound_encoder = self.sound_projection = None
            if config.audio is not None:
                self.sound_encoder = AudioEncoder(config.audio)
                self.sound_projection = SoundProjector(
                    config.audio.hidden_size, config.sound_projection_hidden_size, d
                )
        for tower in (self.vit, self.mlp1, self.sound_encoder, self.sound_projection):
            if tower is not None:
                tower.to(dtype)

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @torch.no_grad()
    def encode_visual(
        self, items: list[ImageItem | VideoItem], pieces: EncodePieces = EncodePieces()
    ) -> list[torch.Tensor]:
        """Images -> [N, D]; videos -> [n, r, c, D] (see vision.encode_visual)."""
        if not items:
            return []
        return encode_visual(self.vit, self.mlp1, items, pieces.vit_tokens, pieces.resize_bytes)

    @torch.no_grad()
    def encode_audio(
        self, items: list[AudioItem], pieces: EncodePieces = EncodePieces()
    ) -> list[torch.Tensor]:
        if not items:
            return []
        if self.sound_encoder is None:
            raise ValueError("this checkpoint has no audio tower (config.json has no sound_config)")
        return encode_audios(self.sound_encoder, self.sound_projection, items, pieces.audio_frames)


def _evs_mask(video_emb: torch.Tensor, q: float) -> torch.Tensor:
    """video_emb [n, r, c, D] -> bool keep mask [n·r·c] (tubelet-major, raster order)."""
    if q <= 0:
        return _all(video_emb.reshape(-1, video_emb.shape[-1]))
    return ops.evs_keep_mask(video_emb, q).reshape(-1)


Encoded = dict[int, torch.Tensor]  # id(item) -> its projected embeddings


@torch.no_grad()
def encode_items(
    model: OmniModel,
    items: list[ImageItem | VideoItem | AudioItem],
    pieces: EncodePieces = EncodePieces(),
) -> Encoded:
    """Run the towers over `items` (and every video's soundtrack), all together, in forwards
    no larger than `pieces`.

    Images and tubelets of equal grids share one ViT forward, so passing the items of many
    requests at once is what batches the encoders across jobs.
    """
    visual = [i for i in items if not isinstance(i, AudioItem)]
    audio = [i for i in items if isinstance(i, AudioItem)]
    audio += [i.audio for i in visual if isinstance(i, VideoItem) and i.audio is not None]
    encoded = dict(zip(map(id, visual), model.encode_visual(visual, pieces), strict=True))
    encoded |= dict(zip(map(id, audio), model.encode_audio(audio, pieces), strict=True))
    return encoded


@torch.no_grad()
def build_prompt_embeds(
    model: OmniModel,
    tokenizer,
    prompt: str,
    items: list[ImageItem | VideoItem | AudioItem],
    evs_rate: float,
) -> tuple[torch.Tensor, torch.Tensor, PromptStats]:
    """Rendered prompt + items -> (embeds [T, D], ids [T] int64, stats), EVS applied."""
    encoded = encode_items(model, items)
    return splice_prompt_embeds(model, prompt_tokens(tokenizer, prompt, items), encoded, evs_rate)


@dataclass(frozen=True)
class PromptTokens:
    """A prompt tokenized with every media placeholder expanded (expand.py)."""

    ids: torch.Tensor  # [T] int64, on the CPU
    visual: list[ImageItem | VideoItem]  # in token order
    audio: list[AudioItem]  # in token order (standalone audio and soundtracks)


def prompt_tokens(tokenizer, prompt: str, items: list[ImageItem | VideoItem | AudioItem]):
    """Rendered prompt (one marker per item) -> PromptTokens. Needs only the items' sizes,
    not their encodings, so the engine's callers run it on their own threads
    (`tokenizer`: a `tokenizers.Tokenizer`)."""
    text, visual, audio = expand_prompt(prompt, items)
    # encode_batch releases the GIL while it runs (encode does not): the engine thread is not
    # held up by a caller tokenizing thousands of placeholder tokens.
    (encoding,) = tokenizer.encode_batch([text], add_special_tokens=False)
    return PromptTokens(torch.tensor(encoding.ids, dtype=torch.int64), visual, audio)


def evs_kept(tubelets: int, tokens_per_tubelet: int, q: float) -> int:
    """Video rows EVS keeps (kernels/evs.py `_select`): known before encoding."""
    if q <= 0:
        return tubelets * tokens_per_tubelet
    return max(tokens_per_tubelet, int(tubelets * tokens_per_tubelet * (1 - q)))


def expected_stats(tokens: PromptTokens, evs_rate: float) -> PromptStats:
    """The PromptStats `splice_prompt_embeds` will give, from the items' sizes alone: the
    engine sizes a request's memory before encoding it."""
    before = after = image = 0
    for item in tokens.visual:
        if isinstance(item, VideoItem):
            before += item.num_tubelets * item.tokens_per_tubelet
            after += evs_kept(item.num_tubelets, item.tokens_per_tubelet, evs_rate)
        else:
            image += item.num_tokens
    audio = sum(a.num_tokens for a in tokens.audio)
    return PromptStats(tokens.ids.shape[0] - before + after, before, after, image, audio)


@torch.no_grad()
def splice_prompt_embeds(
    model: OmniModel, tokens: PromptTokens, encoded: Encoded, evs_rate: float
) -> tuple[torch.Tensor, torch.Tensor, PromptStats]:
    """A tokenized prompt + its items' `encode_items` output -> (embeds [T, D], ids [T],
    stats). Pruned video rows are removed from both ids and embeds: the LLM has no positional
    encoding, so nothing else needs to move (docs/model.md §1.3, §3.3).

    EVS is decided first, so only the kept rows are embedded, and each item's rows are
    written in place: besides `encoded`, the prompt's embeddings and one item's kept rows are
    all that exist at once.
    """
    cfg = model.config
    visual, audio = tokens.visual, tokens.audio
    ids = host_to_device(tokens.ids, model.device)
    img_pos = ids == cfg.img_context_token_id

    rows, masks = [], []  # per visual item: encoder rows [n, D]; a video's EVS keep mask [n]
    for item in visual:
        e = encoded[id(item)]
        rows.append(e.reshape(-1, e.shape[-1]))
        masks.append(_evs_mask(e, evs_rate) if isinstance(item, VideoItem) else None)
    _check_count("<image>", int(img_pos.sum()), sum(r.shape[0] for r in rows))
    kept = [r.shape[0] if m is None else int(m.sum()) for r, m in zip(rows, masks, strict=True)]
    before = sum(m.numel() for m in masks if m is not None)
    after = sum(k for k, m in zip(kept, masks, strict=True) if m is not None)
    pruned = before != after
    if pruned:
        keep = torch.ones_like(ids, dtype=torch.bool)
        every = [_all(r) if m is None else m for r, m in zip(rows, masks, strict=True)]
        keep[img_pos] = torch.cat(every)
        ids = ids[keep]
    embeds = model.llm.embed(ids)
    positions = (ids == cfg.img_context_token_id).nonzero().squeeze(1).split(kept)
    for r, m, pos in zip(rows, masks, positions, strict=True):
        embeds[pos] = r[m] if pruned and m is not None else r

    aud = [encoded[id(i)] for i in audio]
    so_pos = (ids == cfg.sound_context_token_id).nonzero().squeeze(1)
    n_audio = sum(a.shape[0] for a in aud)
    _check_count("<so_embedding>", so_pos.shape[0], n_audio)
    for a, pos in zip(aud, so_pos.split([a.shape[0] for a in aud]), strict=True):
        embeds[pos] = a
    image_tokens = sum(k for k, m in zip(kept, masks, strict=True) if m is None)
    stats = PromptStats(ids.shape[0], before, after, image_tokens, n_audio)
    return embeds, ids, stats


def _all(rows: torch.Tensor) -> torch.Tensor:
    return torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)


def _check_count(token: str, placeholders: int, rows: int) -> None:
    if placeholders != rows:
        raise ValueError(f"{placeholders} {token} placeholders but {rows} embedding rows")
