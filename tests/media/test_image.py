"""Images: formats, EXIF orientation, colour modes, the §2.3 grid rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from media.image import image_item, load_image
from media.limits import MediaLimits
from media.options import MediaOptions
from media.pipeline import process
from media.resize import image_grid, video_grid

LIMITS = MediaLimits()


def pattern(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 5 % 256, (x + y) % 256], -1).astype(np.uint8)


@pytest.mark.parametrize(
    "hw,grid", [((1080, 1920), (68, 120)), ((256, 256), (32, 32)), ((120, 200), (26, 42))]
)
def test_image_grid_examples_from_spec(hw, grid):
    assert image_grid(*hw, budget=13312) == grid


def test_image_grid_caps_and_evens():
    for h, w in [(7000, 5000), (33, 517), (4000, 64), (1, 1)]:
        ph, pw = image_grid(h, w, budget=13312)
        assert ph % 2 == 0 and pw % 2 == 0 and 1024 <= ph * pw <= 13312 or min(ph, pw) == 2


@pytest.mark.parametrize(
    "hw,grid", [((1, 1), (32, 32)), ((720, 1280), (24, 42)), ((1280, 720), (42, 24))]
)
def test_video_grid(hw, grid):
    assert video_grid(*hw) == grid


@pytest.mark.parametrize(
    "fmt,ext", [("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")]
)
def test_lossless_formats_give_identical_pixels(tmp_path, fmt, ext):
    arr = pattern()
    path = str(tmp_path / f"i.{ext}")
    Image.fromarray(arr).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    (item,) = process(path, MediaOptions())
    expected = image_item(Image.fromarray(arr))
    assert item.grid == expected.grid and torch.equal(item.pixels, expected.pixels)


def test_jpeg_and_gif_first_frame(tmp_path):
    arr = pattern()
    Image.fromarray(arr).save(tmp_path / "i.jpg", quality=95)
    assert (
        np.abs(np.asarray(load_image(str(tmp_path / "i.jpg"), LIMITS), dtype=int) - arr).mean() < 4
    )
    frames = [Image.fromarray(np.full((48, 64, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(str(tmp_path / "a.gif"), LIMITS)).max() == 0  # the first frame


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(pattern())
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(str(tmp_path / "o.jpg"), LIMITS)
    assert out.size == (48, 64)
    expected = np.rot90(pattern(), k=-1)
    assert np.abs(np.asarray(out, dtype=int) - expected).mean() < 4


def test_colour_modes(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(str(tmp_path / "a.png"), LIMITS))
    assert out[0, 0].tolist() == [200, 0, 0] and out[1, 1].tolist() == [255, 255, 255]

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(load_image(str(tmp_path / "p.png"), LIMITS))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 20, 30]

    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(tmp_path / "g.png")
    assert np.asarray(load_image(str(tmp_path / "g.png"), LIMITS))[0, 0].tolist() == [77, 77, 77]

    deep = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = np.asarray(load_image(str(tmp_path / "d.png"), LIMITS))[0, :, 0]
    assert out.tolist() == [0, 128, 255, 4]

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = np.asarray(load_image(str(tmp_path / "c.jpg"), LIMITS))[2, 2].tolist()
    assert r > 200 and g < 60 and b < 60
