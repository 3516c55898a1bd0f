"""Placeholder expansion of a rendered prompt (docs/model.md §3.4, §3.5, §5.1).

The chat template leaves one marker per media item: `<image>` per image, `<video>` per
video, `<so_embedding>` per audio stream (a video's soundtrack is its own audio stream,
placed right after the video). `expand_prompt` replaces each marker, in order of
appearance, by the item's token layout:

    image  -> <img> + N×<image> + </img>                       N = ph·pw/4
    video  -> per tubelet g: [\n]"Frame 2g+1 sampled at t1 seconds and frame 2g+2 sampled at
              t2 seconds: " + <img> + N×<image> + </img>       (labels after the first get \n)
    audio  -> <so_start> + M×<so_embedding> + <so_end>          M = AudioItem.num_tokens

The whole expanded string is tokenized once, as the reference processor does, so text
around the markers tokenizes exactly as it would there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from media.items import AUDIO_TOKENS_PER_S, AudioItem, ImageItem, VideoItem
from media.resize import VIDEO_PATCHES

IMAGE_MARKER, VIDEO_MARKER, AUDIO_MARKER = "<image>", "<video>", "<so_embedding>"
_MARKERS = re.compile("|".join(map(re.escape, (IMAGE_MARKER, VIDEO_MARKER, AUDIO_MARKER))))


@dataclass(frozen=True)
class MediaTokens:
    """The token strings of the checkpoint's tokenizer used by the expansion."""

    image: str = "<image>"
    img_start: str = "<img>"
    img_end: str = "</img>"
    audio: str = "<so_embedding>"
    audio_start: str = "<so_start>"
    audio_end: str = "<so_end>"


MEDIA_TOKENS = MediaTokens()


def tubelet_labels(timestamps: list[float], num_tubelets: int, t: int = 2) -> list[str]:
    """One label per tubelet; a short last tubelet (odd frame count) names only its real frame."""
    labels = []
    for g in range(num_tubelets):
        parts = []
        for off in range(t):
            k = g * t + off
            if k >= len(timestamps):
                break
            word = "Frame" if off == 0 else "frame"
            parts.append(f"{word} {k + 1} sampled at {timestamps[k]:.2f} seconds")
        labels.append(" and ".join(parts) + ": ")
    return labels


def label_tokens(encode) -> int:
    """Tokens of the longest tubelet label a chunk can have (frame numbers up to 1 024, times
    past a day), with its newline and image tags: `encode(text) -> ids`."""
    label = tubelet_labels([99999.5] * 1024, 512)[-1]
    return len(encode("\n" + label)) + 2


def video_tokens_per_s(fps: float, evs_rate: float, use_audio: bool, label: int) -> float:
    """Prompt tokens a second of video takes, at most: fps / 2 tubelets of VIDEO_PATCHES / 4
    tokens, 1 - evs_rate of them kept, each with its `label` tokens; its soundtrack's. With
    evs_rate 0 and no label: the encoder output rows a second takes (before EVS)."""
    tubelet = VIDEO_PATCHES // 4 * (1 - evs_rate) + label
    return fps / 2 * tubelet + (AUDIO_TOKENS_PER_S if use_audio else 0.0)


def image_block(n: int, tok: MediaTokens) -> str:
    return tok.img_start + tok.image * n + tok.img_end


def video_block(video: VideoItem, tok: MediaTokens) -> str:
    labels = tubelet_labels(video.timestamps, video.num_tubelets, video.tubelets.shape[1])
    block = image_block(video.tokens_per_tubelet, tok)
    return "\n".join(label + block for label in labels)


def audio_block(audio: AudioItem, tok: MediaTokens) -> str:
    return tok.audio_start + tok.audio * audio.num_tokens + tok.audio_end


def audio_streams(items: list[ImageItem | VideoItem | AudioItem]) -> list[AudioItem]:
    """Audio in prompt order: standalone items and video soundtracks, as the items are listed."""
    out = []
    for item in items:
        if isinstance(item, AudioItem):
            out.append(item)
        elif isinstance(item, VideoItem) and item.audio is not None:
            out.append(item.audio)
    return out


def expand_prompt(
    prompt: str, items: list[ImageItem | VideoItem | AudioItem], tok: MediaTokens = MEDIA_TOKENS
) -> tuple[str, list[ImageItem | VideoItem], list[AudioItem]]:
    """Replace markers by their blocks -> (text, visual items in token order, audio in order).

    Every item must have exactly one marker in `prompt`, and every marker an item.
    """
    queues = {
        IMAGE_MARKER: [i for i in items if isinstance(i, ImageItem)],
        VIDEO_MARKER: [i for i in items if isinstance(i, VideoItem)],
        AUDIO_MARKER: audio_streams(items),
    }
    visual: list[ImageItem | VideoItem] = []
    audio: list[AudioItem] = []

    def replace(m: re.Match) -> str:
        queue = queues[m.group(0)]
        if not queue:
            raise ValueError(f"prompt has more {m.group(0)} markers than media items")
        item = queue.pop(0)
        if isinstance(item, ImageItem):
            visual.append(item)
            return image_block(item.num_tokens, tok)
        if isinstance(item, VideoItem):
            visual.append(item)
            return video_block(item, tok)
        audio.append(item)
        return audio_block(item, tok)

    text = _MARKERS.sub(replace, prompt)
    left = {k: len(v) for k, v in queues.items() if v}
    if left:
        raise ValueError(f"media items without a marker in the prompt: {left}")
    return text, visual, audio
