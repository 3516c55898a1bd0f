"""CPU smoke run of benchmarks/scale_out.py at its smallest: the demo model in two CPU worker
processes (each the shipped Worker around the benchmark's prebuilt pipeline), after one
worker alone, each run on its own redis-server and gateway, jobs uploaded over REST."""

from __future__ import annotations

import json

from benchmarks.scale_out import main

SHARE = 2  # jobs per worker
CLIP_S = 4.0  # the --small clip
TOKENS = 256  # W-video's, every call to its max_tokens (EOS ignored by the benchmark's pipeline)


def test_one_then_two_workers_each_job_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    report = main(["--model", "demo", "--gpus", "2", "--small", "--jobs", str(2 * SHARE)])

    assert json.loads((tmp_path / "scale_out.json").read_text()) == report
    assert report["share"]["max_jobs"] == SHARE and report["model"]["precision"] == "fp32"
    one, two = report["runs"]
    assert (one["workers_n"], one["jobs"]) == (1, SHARE)
    assert (two["workers_n"], two["jobs"]) == (2, 2 * SHARE)
    for run in report["runs"]:
        n = run["jobs"]
        assert run["exactly_once"] and run["succeeded"] == n
        assert run["counters"] == {"attempts": n, "started": n, "succeeded": n}
        workers = run["workers"].values()
        # MAX_CONCURRENT_JOBS is the share: each worker ran exactly its share
        assert [w["jobs"] for w in workers] == [SHARE] * run["workers_n"]
        assert run["video_h"] == n * CLIP_S / 3600 == sum(w["video_h"] for w in workers)
        assert run["output_tokens"] == n * TOKENS
        assert abs(sum(w["video_h_per_h"] for w in workers) - run["video_h_per_h"]) < 1e-9
        assert all(0 <= w["first_start_s"] < w["last_end_s"] <= run["wall_s"] for w in workers)
        queue = run["queue"]
        assert queue and queue[0]["t"] < 1.0 and all(s["queued"] >= 0 for s in queue)
        assert all(b["t"] - a["t"] >= 0.9 for a, b in zip(queue, queue[1:], strict=False))
        assert all(set(s["in_flight"]) <= set(run["workers"]) for s in queue)
        assert all(k <= SHARE for s in queue for k in s["in_flight"].values())
    assert report["ratio"] == two["video_h_per_h"] / (2 * one["video_h_per_h"])
    assert "total(2) / (2 × total(1))" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "scale_out_logs" / "2").iterdir()) == [
        "gateway.log", "worker0.log", "worker1.log"
    ]  # fmt: skip
