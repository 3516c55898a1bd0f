"""What the media pipeline hands to the model: preprocessed, model-ready items.

These are the contract between `media/` (which builds them on CPU, in a process
pool) and `workers/model` (which encodes them). Tensors are CPU float32 unless noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from media.frame_buffers import BufferId
from media.mel import HOP, SAMPLE_RATE


@dataclass
class ImageItem:
    """One image (or one document page) at its native-aspect dynamic resolution (docs/model.md
    §2.3).

    pixels: [3, 16·ph, 16·pw], CLIP-normalised.
    """

    pixels: torch.Tensor
    grid: tuple[int, int]  # (ph, pw) patches, both even
    doc_pages: int = 0  # a document page's: the document's page count (callers render parts)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] // 4


@dataclass
class AudioItem:
    """Log-mel features of one audio stream, split into ≤ 30 s clips (docs/model.md §4.1, §4.2).

    clips: list of [frames_i, 128] features, one per clip, each normalised on its own
    valid frames exactly as the feature extractor does.
    """

    clips: list[torch.Tensor]
    num_samples: int  # 16 kHz samples of the whole stream
    clip_samples: list[int] = field(default_factory=list)  # 16 kHz samples per clip

    @property
    def seconds(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def num_tokens(self) -> int:
        """Encoder rows kept: ceil((samples // HOP) / 8) per clip (NVIDIA's count, docs/model.md
        §4.4)."""
        return sum(-(-(n // HOP) // AUDIO_SUBSAMPLING) for n in self.clip_samples)


AUDIO_SUBSAMPLING = 8  # mel frames per audio encoder row
AUDIO_TOKENS_PER_S = SAMPLE_RATE / HOP / AUDIO_SUBSAMPLING  # AudioItem.num_tokens a second, about


@dataclass
class VideoItem:
    """Sampled frames of one video chunk as 2-frame tubelets (docs/model.md §3).

    tubelets: uint8 [n_tubelets, 2, 3, H, W], the sampled frames exactly as decoded to RGB
    (H, W: the upright size after rotation; from the decoder a channels-last view, so the
    pool copies no transposed frames); an odd last frame is repeated. The resize to
    `grid` and the CLIP normalisation happen on the vision encoder's device
    (`media.resize.video_pixels` -> float [n_tubelets, 2, 3, 16·ph, 16·pw]).
    timestamps: seconds of each sampled frame (len = frames sampled, before the repeat),
    used for the per-tubelet prompt labels (docs/model.md §3.4).
    """

    tubelets: torch.Tensor
    grid: tuple[int, int]  # (ph, pw) patches per frame after the resize
    timestamps: list[float]
    audio: AudioItem | None = None  # the soundtrack of the same time range, when used
    start_s: float = 0.0  # the chunk's time range in the file (seconds from the first frame)
    end_s: float = 0.0
    video_s: float = 0.0  # the whole video stream's length: what a caller decoding parts needs
    # (pool worker, number) of the shared-memory buffer `tubelets` views, when a pool decoded
    # it: hand it back (`MediaPool.recycle`) once nothing reads the frames any more.
    buffer: BufferId | None = None

    @property
    def num_tubelets(self) -> int:
        return self.tubelets.shape[0]

    @property
    def tokens_per_tubelet(self) -> int:
        return self.grid[0] * self.grid[1] // 4


MediaItem = ImageItem | AudioItem | VideoItem


def media_bytes(items: list[MediaItem]) -> int:
    """Bytes of the tensors that `items` hold (a video's soundtrack included)."""

    def size(item: MediaItem | None) -> int:
        if isinstance(item, ImageItem):
            return item.pixels.nbytes
        if isinstance(item, VideoItem):
            return item.tubelets.nbytes + size(item.audio)
        if isinstance(item, AudioItem):
            return sum(c.nbytes for c in item.clips)
        return 0

    return sum(size(i) for i in items)


def frame_buffers(items: list[MediaItem]) -> list[BufferId]:
    """The pool buffers that `items`' frames live in (`MediaPool.recycle` takes them)."""
    return [i.buffer for i in items if isinstance(i, VideoItem) and i.buffer is not None]
