"""Long inputs, several of each at once, under a GPU memory cap (docs/memory.md).

    python -m benchmarks.memory_mix [--caps 0.9 64] [--videos 2] [--documents 1] [--audios 2]
        [--portraits 3] [--photos 3] [--max-tokens 16] [--model full|demo] [--small]
        [--cache DIR]

The jobs go to `Pipeline.submit` all at once, as the GPU worker hands them over:
20-minute 1280×720 30 fps H.264 + AAC videos (`summarize`), 160-page PDFs (`ask`, "Convert
this page to markdown."), 60-minute WAVs (`transcribe`), 1080×1920 portrait clips and
4000×3000 PNGs (`caption`); inputs from memory_mix_inputs, made once under --cache. Once per
cap (below 1: a share of the card; else GiB, as GPU_MEMORY_GB): a fresh pipeline plans its
memory under it, every job must succeed with the usage its input implies (video seconds,
pages, audio seconds, images) and `torch.cuda.max_memory_reserved()` must stay under the
cap. `--model full`: the real-size model with random bf16 weights (the demo checkpoint's
tokenizer and chat template); `demo` with `--small`: a CPU smoke run (no cap to hold).
Prints a short table last; JSON to $OUT/memory_mix.json; exits 1 if a cap was not held.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import torch

from benchmarks.memory_mix_inputs import SMALL, MixSizes, mix_files
from contract.schemas import JobCreate
from workers.engine.engine import engine_config
from workers.engine.memory_plan import GiB
from workers.model.checkpoint_info import read_checkpoint_info
from workers.model.prompt import PromptBuilder
from workers.outcome import error_of
from workers.pipeline import ModelInfo, Pipeline, demo_checkpoint_dir

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = {
    "video": {"task": "summarize"},
    "document": {"task": "ask", "prompt": "Convert this page to markdown."},
    "audio": {"task": "transcribe"},
    "portrait": {"task": "caption"},
    "photo": {"task": "caption"},
}


def expected_usage(kind: str, path: str, sizes: MixSizes) -> dict:
    """The usage the input implies."""
    if kind in ("video", "portrait"):
        with av.open(path) as c:
            return {"video_seconds": c.streams.video[0].duration * c.streams.video[0].time_base}
    if kind == "document":
        return {"pages": sizes.pages}
    if kind == "audio":
        return {"audio_seconds": 60.0 * sizes.audio_minutes}
    return {"images": 1}


def usage_ok(got: dict, want: dict) -> bool:
    """Seconds within one second (a chunk boundary rounds), counts exactly."""
    def close(k: str, v) -> bool:
        return abs(float(got.get(k, 0)) - float(v)) <= (1.0 if "seconds" in k else 0)

    return all(close(k, v) for k, v in want.items())


def one_job(pipe: Pipeline, kind: str, path: str, max_tokens: int, sizes: MixSizes) -> dict:
    request = JobCreate.model_validate(
        {**REQUESTS[kind], "generation": {"max_tokens": max_tokens, "temperature": 0}}
    )
    t = time.monotonic()
    row = {"kind": kind, "file": os.path.basename(path)}
    row["expected"] = expected_usage(kind, path, sizes)
    try:
        out = pipe.submit(request, path).result()
        row |= {"status": "succeeded", "usage": out.usage}
        row["usage_ok"] = usage_ok(out.usage, row["expected"])
    except Exception as exc:  # the job boundary: what a worker would record
        row |= {"status": "failed", "error": error_of(exc, kind).model_dump(), "usage_ok": False}
    row["seconds"] = time.monotonic() - t
    return row


def run_cap(model, cap: float | None, jobs: list[tuple[str, str]], args, sizes) -> dict:
    """All jobs through a fresh pipeline planned under `cap` -> the cap's measurements."""
    cuda = model.device.type == "cuda"
    total = torch.cuda.get_device_properties(model.device).total_memory if cuda else 0
    gib = None if cap is None else (cap * total / GiB if cap < 1 else cap)
    demo = demo_checkpoint_dir()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    pipe = Pipeline(model, read_checkpoint_info(demo), PromptBuilder.from_dir(demo),
                    ModelInfo("mix", None, "bfloat16"), demo=False,
                    engine=engine_config(model, gib))  # fmt: skip
    plan = pipe.engine.config.plan
    t = time.monotonic()
    try:
        with ThreadPoolExecutor(len(jobs)) as ex:
            futures = [ex.submit(one_job, pipe, k, p, args.max_tokens, sizes) for k, p in jobs]
            rows = [f.result() for f in futures]
    finally:
        pipe.close()
    wall = time.monotonic() - t
    peak = torch.cuda.max_memory_reserved() if cuda else 0
    outside = 0
    if cuda:
        free, _ = torch.cuda.mem_get_info(model.device)
        outside = total - free - torch.cuda.memory_reserved(model.device)
    cap_bytes = plan.cap if plan else 0
    return {
        "cap_gib": gib,
        "plan": plan.summary() if plan else None,
        "plan_table": plan.table() if plan else None,
        "wall_s": wall,
        "peak_reserved_gib": peak / GiB,
        "outside_torch_gib": outside / GiB,  # CUDA context etc., at the end
        "cap_held": not cuda or peak <= cap_bytes,
        "jobs": rows,
        "all_succeeded": all(r["status"] == "succeeded" and r["usage_ok"] for r in rows),
    }


def load(kind: str):
    if kind == "full":
        from workers.model.fullsize import build_fullsize_omni

        return build_fullsize_omni()
    from workers.model.loader import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(demo_checkpoint_dir(), device)[0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--caps", type=float, nargs="+", default=[0.9, 64.0])
    defaults = {"videos": 2, "documents": 1, "audios": 2, "portraits": 3, "photos": 3}
    for kind, n in defaults.items():
        ap.add_argument(f"--{kind}", type=int, default=n)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--model", choices=["full", "demo"], default="full")
    ap.add_argument("--small", action="store_true", help="small inputs (CPU smoke run)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = ap.parse_args(argv)
    sizes = SMALL if args.small else MixSizes()
    t = time.monotonic()
    files = mix_files(args.cache, sizes)
    counts = {"video": args.videos, "document": args.documents, "audio": args.audios,
              "portrait": args.portraits, "photo": args.photos}  # fmt: skip
    jobs = [(k, files[k][i % len(files[k])]) for k, n in counts.items() for i in range(n)]
    report = {"inputs_s": time.monotonic() - t, "sizes": vars(sizes), "caps": []}
    model = load(args.model)
    cuda = model.device.type == "cuda"
    report["device"] = torch.cuda.get_device_name(model.device) if cuda else "cpu"
    for cap in args.caps if cuda else [None]:
        report["caps"].append(run_cap(model, cap, jobs, args, sizes))
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if out := os.environ.get("OUT"):
        with open(os.path.join(out, "memory_mix.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)
    _table(report)
    return report


def _table(report: dict) -> None:
    print(f"\n{report['device']}; inputs ready in {report['inputs_s']:.0f} s")
    for c in report["caps"]:
        if c["plan_table"]:
            print(c["plan_table"])
        cap = f"{c['cap_gib']:.1f} GiB" if c["cap_gib"] else "none"
        print(
            f"cap {cap}: peak reserved {c['peak_reserved_gib']:.2f} GiB (+ "
            f"{c['outside_torch_gib']:.2f} outside torch), held: {c['cap_held']}; "
            f"{c['wall_s']:.0f} s; all succeeded: {c['all_succeeded']}"
        )
        print(f"  {'kind':9} {'file':26} {'status':9} {'s':>6}  usage (expected)")
        for r in c["jobs"]:
            got = r.get("usage", {})
            shown = ", ".join(
                f"{k} {float(got.get(k, 0)):.1f} ({float(v):.1f})" for k, v in r["expected"].items()
            )
            status = r["status"] if r["status"] == "succeeded" else r["error"]["code"]
            print(f"  {r['kind']:9} {r['file']:26} {status:9} {r['seconds']:6.1f}  {shown}")


if __name__ == "__main__":
    rep = main()
    sys.exit(0 if all(c["cap_held"] and c["all_succeeded"] for c in rep["caps"]) else 1)
