"""File on disk -> model-ready items: sniff, dispatch to the media type, map every failure."""

from __future__ import annotations

import av

from media.audio import process_audio
from media.document import process_document
from media.errors import MediaError, MediaUnreadable, MediaUnsupported
from media.frame_buffers import FrameBuffers
from media.image import process_image
from media.items import MediaItem
from media.limits import DEFAULT_LIMITS, MediaLimits
from media.options import DEFAULT_OPTIONS, MediaOptions
from media.probe import kind_of
from media.sniff import AUDIO, DOCUMENT, IMAGE, VIDEO
from media.video import process_video
from media.video_decode import DEFAULT_DECODE, DecodeConfig


def process(
    path: str,
    opts: MediaOptions = DEFAULT_OPTIONS,
    limits: MediaLimits = DEFAULT_LIMITS,
    cfg: DecodeConfig = DEFAULT_DECODE,
    shared: FrameBuffers | None = None,
) -> list[MediaItem]:
    """Items for one input: [ImageItem] for an image, one per page for a document, one
    VideoItem per chunk for a video, [AudioItem] for audio. Raises MediaError only.
    `shared`: a pool worker's frame buffers (video frames are written there)."""
    try:
        sniffed = kind_of(path, limits)
        kind = sniffed.kind
        if opts.media_type is not None and opts.media_type != kind:
            if {opts.media_type, kind} != {VIDEO, AUDIO} or sniffed.demuxer is None:
                raise MediaUnsupported(f"the file is not a {opts.media_type}")
            kind = opts.media_type  # audio of a video file, or a video-typed audio-only file
        if kind == IMAGE:
            return [process_image(path, limits, opts.image_budget)]
        if kind == DOCUMENT:
            return process_document(path, limits, opts.image_budget, opts.pages)
        if kind == VIDEO:
            return list(process_video(path, sniffed.demuxer, opts, limits, cfg, shared))
        return [process_audio(path, sniffed.demuxer, limits)]
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as e:
        # Decoders raise many types on hostile input; none of them may reach the client raw.
        raise MediaUnreadable("the media could not be decoded") from e
