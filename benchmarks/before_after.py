"""The standard workloads of an older tree beside this one: same card, same inputs, one call.

    python -m benchmarks.before_after --old DIR [--video 64] [--doc 16] [--audio 32]
                                      [--rounds 1] [--via-cli] [--cache DIR]
                                      [--model full|demo] [--precision bf16|fp8|nvfp4] [--small]

DIR holds an older commit's files (`git archive C | tar -x -C DIR`, an ignored folder carried to
the device). For each workload the old tree's `benchmarks.e2e` runs, then this tree's
(`--rounds` pairs, alternating; the ratio is of the medians), each in a process of its own so
only one of them holds the GPU, both at their default settings on the same input files
(`--cache`, made once, before the first run). `--via-cli`: this tree's first W-video process
also runs the jobs through `omnibatch run`'s runner (`benchmarks.e2e --via-cli`, the same
warm pipeline after its own run). Prints each run's rate
and its ratio to the "before" median, and how long each process took from start to exit
(model build, warm-up and run); JSON to $OUT/before_after.json with every run's whole
workload report (the device tool brings back 8 files a call: each run's own e2e.json and log
stay under <cache>/before_after/<tree><round>-<workload>/, the log's tail is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.e2e_inputs import workload_files
from workers.model.quant import PRECISIONS

ROOT = Path(__file__).resolve().parent.parent


def run_e2e(tree: Path, workload: str, jobs: int, args, out: Path, *extra: str) -> dict:
    """One `benchmarks.e2e` process in `tree`; its report, with the process's seconds."""
    out.mkdir(parents=True, exist_ok=True)
    results = args.cache / "results" / out.name  # job results stay on the device
    cmd = [sys.executable, "-m", "benchmarks.e2e", "--workload", workload, "--jobs", str(jobs),
           "--model", args.model, "--precision", args.precision, "--cache", str(args.cache),
           "--results", str(results),
           *(["--small"] if args.small else []), *extra]  # fmt: skip
    # the tree's packages first; the rest of the path (the device's wheels) stays
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [str(tree)] + [p for p in paths if Path(p).resolve() != ROOT]
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": os.pathsep.join(paths)}
    t0 = time.monotonic()
    with (out / "log.txt").open("w") as log:
        done = subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    if done.returncode:  # a run that fails (the old tree out of memory) is a result too
        tail = (out / "log.txt").read_text()[-2000:]
        print(f"{tree} {workload} exited {done.returncode}:\n{tail}", flush=True)
        return {"error": tail, "process_s": seconds}
    report = json.loads((out / "e2e.json").read_text())
    run = {"row": report["workloads"][workload], "process_s": seconds,
           "device": report["device"], "precision": report["precision"],
           "engine": report["engine"],
           "log_tail": (out / "log.txt").read_text()[-1500:]}  # fmt: skip
    if cli := report.get("via_cli", {}).get(workload):
        run["via_cli"] = {"row": cli, "process_s": seconds}
    return run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the older tree's folder")
    ap.add_argument("--video", type=int, default=64, help="W-video jobs")
    ap.add_argument("--doc", type=int, default=16, help="W-doc jobs")
    ap.add_argument("--audio", type=int, default=32, help="W-audio jobs")
    ap.add_argument("--via-cli", action="store_true", help="add W-video through omnibatch run")
    ap.add_argument("--rounds", type=int, default=1, help="before/after pairs per workload")
    ap.add_argument("--model", choices=["full", "demo"], default="full")
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16", help="both trees' weights")
    ap.add_argument("--small", action="store_true", help="short inputs (CPU smoke run)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = ap.parse_args(argv)
    args.cache = args.cache.resolve()
    out = Path(os.environ.get("OUT") or ROOT / ".cache" / "before_after")
    runs_dir = args.cache / "before_after"
    trees = {"before": args.old.resolve(), "after": ROOT}
    report: dict = {"old": str(args.old), "workloads": {}}
    workloads = [w for w in ("video", "doc", "audio") if getattr(args, w)]
    # Every workload's input files at once, before the first run: each kind's generation
    # fills only some of the cores, and inside a run it would add to one process's seconds.
    with ThreadPoolExecutor(len(workloads) or 1) as ex:
        list(ex.map(lambda w: workload_files(w, args.cache, args.small), workloads))
    for workload in workloads:
        jobs = getattr(args, workload)
        runs = {}
        for r in range(args.rounds):  # alternating, so a drift of the machine hits both
            for name, tree in trees.items():
                run = name if r == 0 else f"{name} {r + 1}"
                cli = workload == "video" and args.via_cli and run == "after"
                run_dir = runs_dir / f"{name}{r}-{workload}"
                runs[run] = run_e2e(tree, workload, jobs, args, run_dir, *["--via-cli"] * cli)
                if cli:
                    failed = {"error": "no via-cli row", "process_s": runs[run]["process_s"]}
                    runs["via_cli"] = runs[run].pop("via_cli", failed)
        report["device"] = runs["after"].get("device", report.get("device"))
        report["workloads"][workload] = runs
        _save(report, out)
    _table(report)
    return report


def _save(report: dict, out: Path) -> None:
    """After each run, so a call cut off by its time limit still brings back what ran."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "before_after.json").write_text(json.dumps(report, indent=1, default=str))


def _table(report: dict) -> None:
    print(f"\n{report['device']}; before = {report['old']}, after = this tree")
    print(f"{'workload':8} {'jobs':>4} {'run':>8} {'metric':>11} {'unit':>12} {'× before':>8} "
          f"{'wall s':>7} {'process s':>9} {'rsv GiB':>7} {'encode s':>8} {'prefill/s':>9} "
          f"{'tok/fwd':>7} {'retries':>7} {'compiles':>8} "
          f"{'launch/thread % of encode, prefill':>35}  OOMs by stage")  # fmt: skip
    for name, runs in report["workloads"].items():
        before, after = (_median(runs, tree) for tree in ("before", "after"))
        for run, r in runs.items():
            if "row" not in r:
                print(f"{name:8} {'':4} {run:>8} failed after {r['process_s']:.0f} s")
                continue
            row = r["row"]
            rsv = row.get("peak_reserved_gib") or 0.0
            encode = row["engine"]["seconds"].get("encode", 0.0)
            per_forward = row.get("tokens_per_prefill_forward", float("nan"))  # newer trees
            retries = row.get("allocator", {}).get("num_alloc_retries", "-")
            compiles = row.get("triton_compiles", {})  # newer trees
            compiled = f"{compiles['count']}/{compiles['seconds']:.1f}s" if compiles else "-"
            shares = "  ".join(_cpu_shares(row["engine"], stage) for stage in ("encode", "prefill"))
            ooms = " ".join(f"{k}:{v}" for k, v in row["engine"].get("ooms", {}).items() if v)
            print(f"{name:8} {row['jobs']:4d} {run:>8} {row['metric']:11.1f} "
                  f"{row['metric_name']:>12} {row['metric'] / before:8.3f} {row['wall_s']:7.1f} "
                  f"{r['process_s']:9.0f} {rsv:7.1f} {encode:8.1f} "
                  f"{row['prefill_tok_s'] or 0:9.0f} {per_forward:7.0f} {retries:>7} {compiled:>8} "
                  f"{shares:>35}  {ooms or '-'}")  # fmt: skip
        print(f"{name:8} after / before (medians): {after / before:.3f}")


def _median(runs: dict, tree: str) -> float:
    """The median rate of `tree`'s runs ("before", "before 2", …) that finished."""
    rates = [r["row"]["metric"] for k, r in runs.items() if k.split()[0] == tree and "row" in r]
    return statistics.median(rates) if rates else float("nan")


def _cpu_shares(engine: dict, stage: str) -> str:
    """'launch% / thread%' of a stage's seconds (newer trees time both; see StageStats)."""
    total = engine["seconds"].get(stage)
    if not total or stage not in engine.get("launch_seconds", {}):
        return "-"
    launch, thread = engine["launch_seconds"][stage], engine["thread_seconds"][stage]
    return f"{100 * launch / total:.0f}/{100 * thread / total:.0f}"


if __name__ == "__main__":
    main()
