"""CPU smoke run of benchmarks/e2e.py on the demo checkpoint: every workload end to end, and
the transformers reference floor on the demo LLM config."""

from __future__ import annotations

import json

from benchmarks.e2e import ROOT, SMALL_PAGE_PATCHES, main
from benchmarks.e2e_reference import reference_floor
from workers.model.demo import demo_config_dict
from workers.model.hf_config import parse_omni

JOBS = 3


def test_every_workload_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    results = tmp_path / "results"
    report = main(["--model", "demo", "--small", "--jobs", str(JOBS), "--results", str(results)])

    assert (
        json.loads((tmp_path / "e2e.json").read_text())["workloads"].keys()
        == report["workloads"].keys()
        == {"video", "doc", "audio"}
    )
    for name, row in report["workloads"].items():
        assert row["jobs"] == JOBS
        for key in ("metric", "prefill_tok_s", "decode_tok_s", "useful_tflop", "mfu"):
            assert row[key] > 0, (name, key)
        shares = row["stage_shares"]
        assert all(shares[k] > 0 for k in ("media", "encoders", "prefill", "decode")), shares
        assert shares["other"] >= 0  # the engine's stages are serial: they fit in the wall time
        assert row["engine"]["vision_patches"] > 0 or name == "audio"
        expected_out = 0
        for j in range(JOBS):
            job = json.loads((results / name / f"job{j:04d}.json").read_text())
            assert job["kind"] == {"video": "video", "doc": "document", "audio": "audio"}[name]
            assert job["decode_cpu_s"] > 0
            for seg in job["segments"]:
                want = {"video": 256, "doc": 512}.get(name) or round(
                    13 * (seg["end_s"] - seg["start_s"])
                )
                assert seg["output_tokens"] == want and seg["finish_reason"] == "length"
                assert seg["prompt_tokens"] > 0
                expected_out += want
        # every sampled token of the timed run belongs to a stored result
        assert row["engine"]["sampled_tokens"] == expected_out
    assert report["workloads"]["doc"]["units"] == 2 * JOBS  # one unit per page
    video = report["workloads"]["video"]["engine"]
    assert video["audio_seconds"] > 0  # the soundtrack went through the audio encoder


def test_reference_floor_tiny():
    c = parse_omni(demo_config_dict()).llm
    ref = reference_floor(c, "cpu", batch=2, prompt_len=24, new_tokens=5)
    assert ref["generated_per_sequence"] == 24 + 5  # EOS suppressed: every new token made
    assert ref["prefill_tok_s"] > 0 and ref["decode_tok_s"] > 0
    assert ref["video_hours_per_hour"] == 2 * 60 / ref["wall_s"]


def test_decode_ahead_stays_in_the_media_budget(tmp_path):
    """With room for almost nothing, the pool still decodes one job per worker to start, then
    only as the engine takes their media, and every job completes."""
    from benchmarks.e2e_inputs import workload_files
    from workers.media.items import media_bytes
    from workers.media.limits import MediaLimits
    from workers.media.options import MediaOptions
    from workers.media.pipeline import process
    from workers.media_units import to_units

    args = ["--model", "demo", "--small", "--workload", "doc", "--jobs", str(JOBS)]
    report = main([*args, "--media-gb", "1e-9", "--results", str(tmp_path)])
    (path,) = workload_files("doc", ROOT / ".cache" / "bench", small=True)
    opts, limits = MediaOptions(image_budget=SMALL_PAGE_PATCHES), MediaLimits()
    units = to_units(opts, process(path, opts, limits)).units
    job_bytes = sum(media_bytes(u.items) for u in units)
    row = report["workloads"]["doc"]
    assert row["peak_media_gb"] * 1e9 <= row["pool_workers"] * job_bytes
    assert sorted(p.name for p in (tmp_path / "doc").iterdir()) == [
        f"job{j:04d}.json" for j in range(JOBS)
    ]
