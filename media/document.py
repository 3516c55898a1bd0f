"""PDF documents: each page rendered by PDFium near the §2.3 patch budget, then as an image."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pypdfium2 as pdfium

from media.errors import MediaTooLarge, MediaUnreadable, MediaUnsupported
from media.image import DEFAULT_BUDGET, image_item
from media.items import ImageItem
from media.limits import MediaLimits, check_decoded_bytes
from media.resize import PATCH

_PASSWORD = 4  # FPDF_ERR_PASSWORD
PAGE_BYTES_PER_PATCH = 3 * PATCH * PATCH * 4  # float32 CLIP-normalised pixels
_SECURITY = 5  # FPDF_ERR_SECURITY (unsupported security handler)


def _open(path: str) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) in (_PASSWORD, _SECURITY):
            raise MediaUnsupported("password-protected or encrypted PDFs are not supported") from e
        raise MediaUnreadable("the PDF could not be read (damaged or truncated)") from e


def render_scale(width_pt: float, height_pt: float, budget: int) -> float:
    """Scale (pixels per point) at which the page's patch grid is about `budget` patches."""
    return math.sqrt(budget * PATCH * PATCH / max(1.0, width_pt * height_pt))


def process_document(
    path: str,
    limits: MediaLimits,
    budget: int = DEFAULT_BUDGET,
    pages: tuple[int, int] | None = None,
) -> list[ImageItem]:
    """One ImageItem per page of `pages` ([first, end), 0-based; all if None), in order."""
    if os.path.getsize(path) > limits.max_file_bytes:
        raise MediaTooLarge("the document is larger than the size limit")
    pdf = _open(path)
    try:
        n = len(pdf)
        if n == 0:
            raise MediaUnreadable("the PDF has no pages")
        if n > limits.max_pages:
            raise MediaTooLarge(f"the PDF has {n} pages, over the limit of {limits.max_pages}")
        first, end = pages if pages is not None else (0, n)
        if not 0 <= first < end or first >= n:
            raise MediaUnreadable(f"the PDF has {n} pages: none in [{first}, {end})")
        end = min(end, n)
        check_decoded_bytes((end - first) * budget * PAGE_BYTES_PER_PATCH, limits)  # at most
        items = []
        for i in range(first, end):
            page = pdf[i]
            w, h = page.get_size()
            scale = render_scale(w, h, budget)
            if w * h * scale * scale > limits.max_image_pixels:
                raise MediaTooLarge("a PDF page renders to more pixels than the limit")
            im = page.render(scale=scale, may_draw_forms=True).to_pil().convert("RGB")
            items.append(replace(image_item(im, budget), doc_pages=n))
            page.close()
        return items
    except pdfium.PdfiumError as e:
        raise MediaUnreadable("a PDF page could not be rendered") from e
    finally:
        pdf.close()
