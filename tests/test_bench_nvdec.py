"""benchmarks.nvdec on the CPU: the software way decodes every frame; without a GPU the NVDEC
ways fail with an error (what the benchmark prints), not with frames from the CPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks.nvdec import _ways, decode_whole
from scripts.make_samples import write_video


def test_software_decodes_every_frame_and_nvdec_needs_a_gpu(tmp_path):
    path = str(write_video(tmp_path / "clip.mp4", seconds=2.0, fps=8))
    row = decode_whole(path)
    assert row["frames"] == 16 and row["format"] == "yuv420p" and row["cpu_s"] > 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the NVDEC ways may work")
    for name in ("nvdec", "nvdec on GPU"):
        with pytest.raises(Exception):  # noqa: B017 - whichever error FFmpeg gives without NVDEC
            decode_whole(path, _ways()[name])
