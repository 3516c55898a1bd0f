"""Still images: safe Pillow decode, colour normalisation to RGB, dynamic resolution (docs/model.md
§2.3)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from media.errors import MediaTooLarge, MediaUnreadable, MediaUnsupported
from media.items import ImageItem
from media.limits import MediaLimits
from media.resize import image_grid, resize_normalize

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP")
# Spec §9.6: every image gets min(max((16384 - 4)·4, 1024·n), 13312) patches: the cap.
DEFAULT_BUDGET = 13312


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited onto white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: Pillow's own convert clips at 255 instead of rescaling.
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a / 257.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    elif im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float64) + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def load_image(path: str, limits: MediaLimits) -> Image.Image:
    """Decode the first frame of an image file to RGB with EXIF orientation applied."""
    if os.path.getsize(path) > limits.max_file_bytes:
        raise MediaTooLarge("the image file is larger than the size limit")
    try:
        with warnings.catch_warnings():
            # Our own declared-size check below is the cap; Pillow still refuses past 2× its own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=FORMATS)
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise MediaTooLarge(f"the image declares {w}x{h} pixels, over the pixel limit")
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError as e:
        raise MediaTooLarge("the image declares more pixels than the limit") from e
    except Image.UnidentifiedImageError as e:
        raise MediaUnsupported("the image format is not supported") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise MediaUnreadable("the image could not be decoded (truncated or corrupt)") from e


def image_item(im: Image.Image, budget: int = DEFAULT_BUDGET) -> ImageItem:
    """RGB image -> ImageItem at the §2.3 grid for `budget` patches (1024 ≤ budget ≤ 13312)."""
    rgb = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())  # [H, W, 3]
    grid = image_grid(rgb.shape[0], rgb.shape[1], budget)
    return ImageItem(pixels=resize_normalize(rgb[None], grid)[0], grid=grid)


def process_image(path: str, limits: MediaLimits, budget: int = DEFAULT_BUDGET) -> ImageItem:
    return image_item(load_image(path, limits), budget)
