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

from workers.media.items import AudioItem, ImageItem, VideoItem
from workers.model import ops
from workers.model.audio import AudioEncoder, encode_audios
from workers.model.config import OmniConfig
from workers.model.expand import expand_prompt
from workers.model.nemotron_h import NemotronH
from workers.model.projectors import SoundProjector, VisionProjector
from workers.model.quant import QuantPlan
from workers.model.vision import RadioViT, encode_visual


@dataclass(frozen=True)
class PromptStats:
    prompt_tokens: int  # after EVS: what the LLM prefills
    video_tokens_before_evs: int
    video_tokens_after_evs: int
    image_tokens: int
    audio_tokens: int


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
        return self.llm.embeddings.weight.device

    @torch.no_grad()
    def encode_visual(self, items: list[ImageItem | VideoItem]) -> list[torch.Tensor]:
        """Images -> [N, D]; videos -> [n, r, c, D] (see vision.encode_visual)."""
        return encode_visual(self.vit, self.mlp1, items) if items else []

    @torch.no_grad()
    def encode_audio(self, items: list[AudioItem]) -> list[torch.Tensor]:
        if not items:
            return []
        if self.sound_encoder is None:
            raise ValueError("this checkpoint has no audio tower (config.json has no sound_config)")
        return encode_audios(self.sound_encoder, self.sound_projection, items)


def _evs_mask(video_emb: torch.Tensor, q: float) -> torch.Tensor:
    """video_emb [n, r, c, D] -> bool keep mask [n·r·c] (tubelet-major, raster order)."""
    if q <= 0:
        return torch.ones(video_emb.shape[:3].numel(), dtype=torch.bool, device=video_emb.device)
    return ops.evs_keep_mask(video_emb, q).reshape(-1)


Encoded = dict[int, torch.Tensor]  # id(item) -> its projected embeddings


@torch.no_grad()
def encode_items(model: OmniModel, items: list[ImageItem | VideoItem | AudioItem]) -> Encoded:
    """Run the towers over `items` (and every video's soundtrack), all together.

    Images and tubelets of equal grids share one ViT forward, so passing the items of many
    requests at once is what batches the encoders across jobs.
    """
    visual = [i for i in items if not isinstance(i, AudioItem)]
    audio = [i for i in items if isinstance(i, AudioItem)]
    audio += [i.audio for i in visual if isinstance(i, VideoItem) and i.audio is not None]
    encoded = dict(zip(map(id, visual), model.encode_visual(visual), strict=True))
    encoded |= dict(zip(map(id, audio), model.encode_audio(audio), strict=True))
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


@torch.no_grad()
def splice_prompt_embeds(
    model: OmniModel, tokens: PromptTokens, encoded: Encoded, evs_rate: float
) -> tuple[torch.Tensor, torch.Tensor, PromptStats]:
    """A tokenized prompt + its items' `encode_items` output -> (embeds [T, D], ids [T],
    stats). Pruned video rows are removed from both ids and embeds: the LLM has no positional
    encoding, so nothing else needs to move (docs/model.md §1.3, §3.3).
    """
    cfg = model.config
    visual, audio = tokens.visual, tokens.audio
    ids = tokens.ids.to(model.device)
    embeds = model.llm.embed(ids)
    img_pos = ids == cfg.img_context_token_id
    so_pos = ids == cfg.sound_context_token_id

    vis = [encoded[id(i)] for i in visual]
    keep_img, before, after = [], 0, 0
    for item, emb in zip(visual, vis, strict=True):
        if isinstance(item, VideoItem):
            mask = _evs_mask(emb, evs_rate)
            before += mask.numel()
            after += int(mask.sum())
        else:
            mask = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
        keep_img.append(mask)
    if vis:
        rows = torch.cat([e.reshape(-1, e.shape[-1]) for e in vis]).to(embeds.dtype)
        _check_count("<image>", int(img_pos.sum()), rows.shape[0])
        embeds[img_pos] = rows
    else:
        _check_count("<image>", int(img_pos.sum()), 0)

    aud = [encoded[id(i)] for i in audio]
    n_audio = sum(a.shape[0] for a in aud)
    _check_count("<so_embedding>", int(so_pos.sum()), n_audio)
    if aud:
        embeds[so_pos] = torch.cat(aud).to(embeds.dtype)

    if before != after:
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[img_pos] = torch.cat(keep_img)
        ids, embeds = ids[keep], embeds[keep]
    stats = PromptStats(
        prompt_tokens=ids.shape[0],
        video_tokens_before_evs=before,
        video_tokens_after_evs=after,
        image_tokens=int(img_pos.sum()) - before,
        audio_tokens=n_audio,
    )
    return embeds, ids, stats


def _check_count(token: str, placeholders: int, rows: int) -> None:
    if placeholders != rows:
        raise ValueError(f"{placeholders} {token} placeholders but {rows} embedding rows")
