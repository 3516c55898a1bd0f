"""CPU smoke run of benchmarks/e2e.py on the demo checkpoint: every workload end to end through
the shipped pipeline, `omnibatch run`'s runner under a tiny media budget, and the transformers
reference floor on the demo LLM config."""

from __future__ import annotations

import json

import pytest

from benchmarks.e2e import ROOT, SMALL_PAGE_PATCHES, WORKLOADS, job_counts, main
from benchmarks.e2e_reference import reference_floor
from kernels.interpreter import interpreting
from workers.model.demo import demo_config_dict
from workers.model.hf_config import parse_omni

JOBS = 3


def _calls(line: dict) -> int:
    return len(line["output"].get("segments") or [0])


def test_every_workload_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    results = tmp_path / "results"
    counts = {"video": JOBS, "doc": JOBS, "audio": JOBS - 1}  # --jobs per workload
    jobs = ",".join(f"{k}={v}" for k, v in counts.items())
    report = main(
        ["--model", "demo", "--small", "--jobs", jobs, "--results", str(results), "--gpu-busy"]
    )

    assert (
        json.loads((tmp_path / "e2e.json").read_text())["workloads"].keys()
        == report["workloads"].keys()
        == {"video", "doc", "audio"}
    )
    media = {"video": "video_seconds", "doc": "pages", "audio": "audio_seconds"}
    for name, row in report["workloads"].items():
        assert row["jobs"] == counts[name]
        for key in ("metric", "prefill_tok_s", "decode_tok_s", "useful_tflop", "mfu", "pool_cpu_s"):
            assert row[key] > 0, (name, key)
        shares = row["stage_shares"]
        assert all(shares[k] > 0 for k in ("media", "encoders", "prefill", "decode")), shares
        assert shares["other"] >= 0  # the engine's stages are serial: they fit in the wall time
        assert row["engine"]["vision_patches"] > 0 or name == "audio"
        if interpreting():  # nothing is compiled (on a GPU, whatever the warm-up left) ...
            nothing = {"count": 0, "seconds": 0.0, "kernels": {}, "variants": []}
            assert row["triton_compiles"] == nothing
            assert row["gpu_busy"] is None  # ... and --gpu-busy has no GPU to profile
        lines = [
            json.loads((results / name / f"job{j:04d}.json").read_text())
            for j in range(counts[name])
        ]
        per_call = WORKLOADS[name].max_tokens(small=True)
        for line in lines:
            assert line["status"] == "succeeded" and line["usage"][media[name]] > 0, line
            # EOS ignored: every model call generated its max_tokens
            assert line["usage"]["output_tokens"] == _calls(line) * per_call
        # every sampled token of the timed run belongs to a stored result
        assert row["engine"]["sampled_tokens"] == sum(
            line["usage"]["output_tokens"] for line in lines
        )
    assert report["workloads"]["doc"]["units"] == 2 * JOBS  # one model call per page
    video = report["workloads"]["video"]["engine"]
    assert video["audio_seconds"] > 0  # the soundtrack went through the audio encoder


def test_reference_floor_tiny():
    c = parse_omni(demo_config_dict()).llm
    ref = reference_floor(c, "cpu", batch=2, prompt_len=24, new_tokens=5)
    assert ref["generated_per_sequence"] == 24 + 5  # EOS suppressed: every new token made
    assert ref["prefill_tok_s"] > 0 and ref["decode_tok_s"] > 0
    assert ref["video_hours_per_hour"] == 2 * 60 / ref["wall_s"]


def test_cli_runner_keeps_decode_ahead_in_the_media_budget(tmp_path):
    """Through `omnibatch run`'s runner with room for almost nothing (after the same jobs'
    Pipeline run in the same process): the pool still decodes one job per worker to start,
    then only as the engine takes their media, and every job gets its line."""
    from benchmarks.e2e_inputs import workload_files
    from media.items import media_bytes
    from media.limits import MediaLimits
    from media.options import MediaOptions
    from media.pipeline import process
    from workers.media_units import to_units

    args = ["--model", "demo", "--small", "--workload", "doc", "--jobs", str(JOBS), "--via-cli"]
    report = main([*args, "--media-gb", "1e-9", "--results", str(tmp_path)])
    (path,) = workload_files("doc", ROOT / ".cache" / "bench", small=True)
    opts, limits = MediaOptions(image_budget=SMALL_PAGE_PATCHES), MediaLimits()
    units = to_units(opts, process(path, opts, limits)).units
    job_bytes = sum(media_bytes(u.items) for u in units)
    assert report["workloads"]["doc"]["jobs"] == JOBS  # the Pipeline's own run came first
    row = report["via_cli"]["doc"]
    assert row["peak_media_gb"] * 1e9 <= row["pool_workers"] * job_bytes
    assert row["metric"] > 0 and row["stage_shares"]["media"] is None  # not seen by the runner
    lines = [json.loads(line) for line in (tmp_path / "doc.jsonl").read_text().splitlines()]
    assert [line["input"] for line in lines] == [path] * JOBS
    assert all(line["status"] == "succeeded" and line["usage"]["pages"] == 2 for line in lines)


def test_before_after_compares_two_trees_on_the_same_inputs(tmp_path, monkeypatch):
    """This tree against itself, both with FP8 weights: each run in a process of its own,
    reports gathered in one JSON (with the new timers), the cache shared, nothing but that
    JSON under $OUT."""
    from benchmarks import before_after

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    cache = tmp_path / "cache"
    argv = ["--old", str(ROOT), "--model", "demo", "--small", "--video", "1", "--doc", "0",
            "--audio", "0", "--via-cli", "--precision", "fp8", "--cache", str(cache)]  # fmt: skip
    report = before_after.main(argv)
    runs = report["workloads"]["video"]
    assert set(runs) == {"before", "after", "via_cli"}
    assert runs["before"]["precision"] == runs["after"]["precision"] == "fp8"
    for run in runs.values():
        row = run["row"]
        assert row["jobs"] == 1 and row["metric"] > 0 and row["engine"]["prefill_forwards"] >= 1
        assert row["engine"]["launch_seconds"].keys() == row["engine"]["seconds"].keys()
    saved = json.loads((tmp_path / "out" / "before_after.json").read_text())
    assert saved["workloads"]["video"]["after"]["row"] == runs["after"]["row"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["before_after.json"]
    assert (cache / "before_after" / "before0-video" / "e2e.json").is_file()


def test_job_counts_one_for_all_or_one_each():
    names = ["video", "doc", "audio"]
    assert job_counts("64", names) == {"video": 64, "doc": 64, "audio": 64}
    assert job_counts("video=64,doc=8,audio=4", names) == {"video": 64, "doc": 8, "audio": 4}
    assert job_counts("doc=8", ["doc"]) == {"doc": 8}
    with pytest.raises(SystemExit, match="audio"):
        job_counts("video=64,doc=8", names)
