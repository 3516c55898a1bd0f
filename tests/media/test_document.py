"""PDF pages rendered near the patch budget, in order, keeping their aspect."""

from __future__ import annotations

import pypdfium2 as pdfium
import pytest
import torch

from media.options import MediaOptions
from media.pipeline import process
from media.resize import CLIP_MEAN, CLIP_STD


@pytest.mark.parametrize("budget", [1024, 4096])
def test_pages_render_to_the_budget(tmp_path, budget):
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(612, 792)  # US letter, portrait
    pdf.new_page(300, 100)  # a wide strip
    pdf.save(tmp_path / "d.pdf")
    items = process(str(tmp_path / "d.pdf"), MediaOptions(image_budget=budget))
    assert len(items) == 2
    for item, aspect in zip(items, (792 / 612, 100 / 300), strict=True):
        ph, pw = item.grid
        assert ph % 2 == 0 and pw % 2 == 0 and ph * pw <= budget
        assert ph * pw >= 0.8 * budget  # renders close to the budget rather than far below it
        assert abs(ph / pw - aspect) / aspect < 0.15
        white = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        assert torch.allclose(
            item.pixels.mean(dim=(1, 2)), white, atol=1e-3
        )  # blank pages are white
