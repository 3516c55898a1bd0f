"""Every hostile or broken input fails fast with its api.md error code; limits are enforced."""

from __future__ import annotations

import time

import pypdfium2 as pdfium
import pytest

from media.errors import MediaError
from media.limits import MediaLimits
from media.options import MediaOptions
from media.pipeline import process
from media.resize import image_grid
from tests.media.bad_corpus import build
from tests.media.corpus import write_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("bad")))


@pytest.mark.parametrize(
    "name",
    [
        "truncated_mp4",
        "missing_moov",
        "no_av_streams",
        "random_bytes",
        "empty",
        "png_100000x100000",
        "truncated_jpeg",
        "truncated_pdf",
        "encrypted_pdf",
        "hls_playlist",
        "ffconcat",
        "zip_bomb",
    ],
)
def test_bad_input_fails_with_its_code(corpus, name):
    path, code = corpus[name]
    t = time.monotonic()
    with pytest.raises(MediaError) as err:
        process(path, MediaOptions())
    assert err.value.code == code
    assert time.monotonic() - t < 5
    assert "/" not in err.value.message  # no server path reaches a client


@pytest.mark.parametrize("media_type", ["video", "audio", "document", "image"])
def test_type_override_cannot_reach_a_playlist(corpus, media_type):
    with pytest.raises(MediaError) as err:
        process(corpus["hls_playlist"][0], MediaOptions(media_type=media_type))
    assert err.value.code == "media_unsupported"


def test_wrong_extension_is_sniffed_by_content(tmp_path):
    from PIL import Image

    png = tmp_path / "photo.mp4"
    Image.new("RGB", (40, 30)).save(png, format="PNG")
    (item,) = process(str(png), MediaOptions())
    assert item.grid == image_grid(30, 40, budget=13312)
    vid = write_video(str(tmp_path / "clip.png"), frames=3, fps=10, container="mp4")
    (item,) = process(vid, MediaOptions(fps=10))
    assert item.timestamps == [0.0, 0.1, 0.2]
    with pytest.raises(MediaError) as err:
        process(str(png), MediaOptions(media_type="video"))
    assert err.value.code == "media_unsupported"


def test_limits(tmp_path):
    vid = write_video(str(tmp_path / "v.mkv"), frames=20, fps=10, audio=[("aac", 16000, 1)])
    cases = [
        (MediaLimits(max_duration_s=1.0), "media_too_long", MediaOptions()),
        (MediaLimits(max_duration_s=1.0), "media_too_long", MediaOptions(media_type="audio")),
        (MediaLimits(max_streams=1), "media_too_large", MediaOptions()),
        (MediaLimits(max_file_bytes=100), "media_too_large", MediaOptions()),
        (MediaLimits(max_video_pixels=1000), "media_too_large", MediaOptions()),
        (MediaLimits(max_decoded_bytes=10_000), "media_too_large", MediaOptions()),
    ]
    for limits, code, opts in cases:
        with pytest.raises(MediaError) as err:
            process(vid, opts, limits)
        assert err.value.code == code
    pdf = pdfium.PdfDocument.new()
    for _ in range(3):
        pdf.new_page(100, 100)
    pdf.save(tmp_path / "p.pdf")
    with pytest.raises(MediaError) as err:
        process(str(tmp_path / "p.pdf"), MediaOptions(), MediaLimits(max_pages=2))
    assert err.value.code == "media_too_large"
    with pytest.raises(MediaError) as err:
        process(str(tmp_path / "p.pdf"), MediaOptions(), MediaLimits(max_decoded_bytes=10**6))
    assert err.value.code == "media_too_large" and "start_s" in err.value.message
