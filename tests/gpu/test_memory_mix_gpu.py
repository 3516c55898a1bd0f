"""The long-input mix under a GPU memory cap (issue 12; docs/memory.md "Checking it on a GPU").

    pytest --noconftest -m gpu -s tests/gpu/test_memory_mix_gpu.py

Two 20-minute 720p videos, two 160-page PDFs, two 60-minute WAVs, three 1080×1920 portrait
clips and three 4000×3000 photos, all at once through `Pipeline.submit`, with the full-size
model (random bf16 weights), once under 0.9 × the card and once under 64 GiB
(`benchmarks/memory_mix.py` does the work and writes $OUT/memory_mix.json). Every job must
succeed with the usage its input implies, and the allocator's peak reserve must stay under
each cap. Inputs are made once under .cache/bench (a few minutes the first time); the runs
take about 5 minutes on an H100.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.memory_mix import main

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_long_input_mix_under_two_caps():
    report = main(["--caps", "64", "0.9", "--videos", "2", "--documents", "2", "--audios", "2",
                   "--portraits", "3", "--photos", "3"])  # fmt: skip
    assert [round(c["cap_gib"], 1) for c in report["caps"]][0] == 64.0
    for cap in report["caps"]:
        bad = [r for r in cap["jobs"] if r["status"] != "succeeded" or not r["usage_ok"]]
        failed = [(r["kind"], r["file"], r.get("error"), r.get("usage")) for r in bad]
        assert not failed, f"under {cap['cap_gib']:.1f} GiB: {failed}"
        assert len(cap["jobs"]) == 12
        assert cap["cap_held"], f"peak reserved {cap['peak_reserved_gib']:.2f} GiB"
        assert cap["peak_reserved_gib"] <= cap["cap_gib"]
