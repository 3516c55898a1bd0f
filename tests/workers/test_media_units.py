"""A long video decoded in parts through the pool gives the chunks one decode gives."""

from __future__ import annotations

import pypdfium2 as pdfium
import pytest
import torch

from media.document import PAGE_BYTES_PER_PATCH
from media.items import media_bytes
from media.options import MediaOptions
from media.pipeline import process
from media.pool import MediaPool
from tests.media.corpus import write_video
from workers.media_budget import MediaBudget
from workers.media_units import decode, to_units


@pytest.fixture(scope="module")
def pool():
    with MediaPool(workers=2) as p:
        yield p


@pytest.mark.parametrize("use_audio", [True, False])
def test_parts_equal_one_decode(pool, tmp_path, use_audio):
    path = write_video(str(tmp_path / "long.mp4"), frames=57, fps=10, gop=7,
                       audio=[("aac", 44100, 2)])  # fmt: skip
    opts = MediaOptions(fps=4.0, max_frames=3, start_s=0.4, use_audio=use_audio)  # 0.75 s chunks
    whole = to_units(opts, process(path, opts)).units
    budget = MediaBudget(1 << 30, first=2)
    parts = []
    for part in decode(path, opts, pool, budget, part_bytes=1):  # a chunk each
        parts.append(part)
        budget.release(sum(media_bytes(u.items) for u in part.units))
    assert len(parts) == len(whole) == 8  # 0.4 s .. 5.7 s in 0.75 s chunks, the last short
    for (got,), want in zip((p.units for p in parts), whole, strict=True):
        a, b = got.items[0], want.items[0]
        assert (got.start_s, got.end_s) == (want.start_s, want.end_s)
        assert a.timestamps == b.timestamps and torch.equal(a.tubelets, b.tubelets)
        if use_audio:
            assert a.audio.clip_samples == b.audio.clip_samples
            assert all(torch.equal(x, y) for x, y in zip(a.audio.clips, b.audio.clips, strict=True))
        else:
            assert a.audio is None and b.audio is None
    assert budget.held == 0 and budget.in_flight == 0


def test_a_short_file_is_one_part(pool, tmp_path):
    path = write_video(str(tmp_path / "short.mp4"), frames=8, fps=10)
    budget = MediaBudget(1 << 30, first=2)
    (part,) = decode(path, MediaOptions(fps=2.0), pool, budget)
    assert part.kind == "video" and len(part.units) == 1 and budget.in_flight == 0


def test_document_parts_equal_one_render(pool, tmp_path):
    pdf = pdfium.PdfDocument.new()
    for k in range(7):
        pdf.new_page(200 + 40 * k, 300)  # a different aspect per page: each tells its place
    pdf.save(tmp_path / "d.pdf")
    path, opts = str(tmp_path / "d.pdf"), MediaOptions(image_budget=1024)
    whole = to_units(opts, process(path, opts)).units
    budget = MediaBudget(1 << 30, first=2)
    parts = list(decode(path, opts, pool, budget, part_bytes=2 * 1024 * PAGE_BYTES_PER_PATCH))
    assert [len(p.units) for p in parts] == [2, 2, 2, 1]
    got = [u for p in parts for u in p.units]
    assert [u.page for u in got] == [u.page for u in whole] == list(range(1, 8))
    for g, w in zip(got, whole, strict=True):
        assert g.items[0].grid == w.items[0].grid
        assert torch.equal(g.items[0].pixels, w.items[0].pixels)
    assert sum(p.usage["pages"] for p in parts) == 7 and budget.in_flight == 0
