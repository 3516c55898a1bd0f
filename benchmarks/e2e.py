"""W-video, W-doc and W-audio end to end (docs/performance.md "Standard workloads").

    python -m benchmarks.e2e [--workload video|doc|audio|all] [--model full|demo] [--jobs N]
                             [--small] [--reference] [--gpu-memory-gb N] [--cache DIR]
                             [--results DIR]

From files on disk to stored results (e2e_flow): all jobs queued at once, their media decoded
by the process pool (one worker per core) ahead of the GPU as far as host memory allows; as
each decode lands its units' prompts are rendered and handed to the batch engine, so CPU
decode overlaps GPU work; each finished job's result is written as JSON. Wall time runs
from the first decode submitted to the last result written.

`--model full`: the real-size model with random bf16 weights on CUDA; the real tokenizer is
not available here, so prompts use the demo checkpoint's tokenizer and chat template (its
special-token ids match the real config; text tokens differ, token counts barely).
`--model demo`: the tiny demo checkpoint (CPU smoke run; its FLOP counts are still the real
model's, so its MFU means nothing). `--small` shrinks the inputs (see e2e_inputs) and
renders pages near 1 K patches.
`--reference` adds, after our model is freed, transformers' NemotronH `generate` floor.
`--gpu-memory-gb N` plans the engine's memory under N GiB, as the worker's GPU_MEMORY_GB
(default: 90 % of the card), so workloads compare before and after on one card.

Counting (spec "Counting"): 5.75 GFLOP per LLM token fed (prefill or decode), + 0.7 GFLOP LM
head per sampled token, 1.43 GFLOP per ViT patch position (a 2-frame tubelet shares one);
the audio encoder has no spec figure and is not counted. MFU = those FLOPs / wall / 767
TFLOP/s. Stage shares come from the engine's synchronised stage timers (EngineConfig.profile):
"media" is the wall time before the GPU got its first request (decode later overlaps GPU work;
its total CPU seconds and the pool's busy share are reported beside), "other" is the rest
(engine idle, scheduling, result writing).
Prints a short table last; full JSON to $OUT/e2e.json when OUT is set.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.common import BF16_TFLOPS, LLM_FLOP_PER_TOKEN
from benchmarks.e2e_flow import Flow
from benchmarks.e2e_inputs import PAGE_H, PAGE_W, workload_files
from benchmarks.e2e_pool import UnitPool
from workers.engine.engine import Engine, Prepared, engine_config
from workers.engine.request import SamplingParams
from workers.engine.stats import StageStats
from workers.media.items import frame_buffers
from workers.media.options import MediaOptions
from workers.media.resize import PATCH
from workers.media_budget import shm_budget
from workers.media_units import Unit
from workers.model.prompt import PromptBuilder, task_text

LM_HEAD_FLOP, VIT_FLOP_PER_PATCH = 0.7e9, 1.43e9
ROOT = Path(__file__).resolve().parent.parent
SMALL_PAGE_PATCHES = 1024  # --small: pages rendered near 1 K patches
# W-doc renders its 1024×1536-point pages at 1024×1536 pixels (docs/performance.md: "pages
# rendered at 1024×1536", ≈ 14 ViT TFLOP a page): a 64×96 grid, where the service's default
# budget of 13 312 patches would render them at ≈ 1504×2256.
DOC_PAGE_PATCHES = (PAGE_W // PATCH) * (PAGE_H // PATCH)


@dataclass(frozen=True)
class Workload:
    name: str
    media: str  # the input kind named in the task text
    task: str
    prompt: str | None
    opts: MediaOptions
    evs_rate: float
    metric: str
    target: float

    def max_tokens(self, unit: Unit) -> int:
        if self.name == "video":
            return 256
        if self.name == "doc":
            return 512  # per page: each page is a unit
        return round(13 * (unit.end_s - unit.start_s))  # ≈ 13 tokens per audio second

    def amount(self, usage: dict) -> float:
        """The metric's numerator for one job: hours of video or audio, or pages."""
        if self.name == "doc":
            return usage["pages"]
        return usage["video_seconds" if self.name == "video" else "audio_seconds"] / 3600


WORKLOADS = {
    "video": Workload(
        "video", "video", "caption", None, MediaOptions(fps=1.0, max_frames=512, use_audio=True),
        0.5, "video-hours/hour", 300.0,
    ),
    "doc": Workload(
        "doc", "document", "ask", "Convert this page to markdown.",
        MediaOptions(media_type="document", image_budget=DOC_PAGE_PATCHES), 0.0, "pages/hour",
        40000.0,
    ),
    "audio": Workload(
        "audio", "audio", "transcribe", None, MediaOptions(media_type="audio"), 0.0,
        "audio-hours/hour", 800.0,
    ),
}  # fmt: skip


def load(kind: str) -> tuple:
    """(OmniModel, PromptBuilder, note) for `--model full|demo`."""
    from workers.pipeline import demo_checkpoint_dir

    demo_dir = demo_checkpoint_dir()
    prompts = PromptBuilder.from_dir(demo_dir)
    if kind == "full":
        from workers.model.fullsize import build_fullsize_omni

        note = "full-size random bf16 weights; demo tokenizer and chat template (real one absent)"
        return build_fullsize_omni(), prompts, note
    from workers.model.loader import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(demo_dir, device)[0], prompts, "demo checkpoint (tiny, random)"


def _delta(after: StageStats, before: StageStats) -> dict:
    counts = [k for k in vars(after) if k not in ("profile", "seconds", "peak_unprefilled")]
    out = {k: getattr(after, k) - getattr(before, k) for k in counts}
    out["peak_unprefilled"] = after.peak_unprefilled  # a high-water mark (warm-up included)
    out["seconds"] = {k: v - before.seconds.get(k, 0.0) for k, v in after.seconds.items()}
    return out


def warm_up(w: Workload, engine: Engine, prompts: PromptBuilder, pool, workers: int, files):
    """One decode per pool worker (all started and warm before the clock runs), then up to
    32 of their units through the engine, 4 tokens each: encoder, full prefill chunks and
    decode kernels meet this workload's shapes once."""
    futures = [pool.submit(files[i % len(files)], w.opts) for i in range(workers)]
    units = [u for f in futures for u in f.result()[0].units][:32]
    text = task_text(w.task, w.prompt, w.media)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    preps = [
        Prepared(prompts.render(u.items, text, False), u.items, params, w.evs_rate) for u in units
    ]
    for f in [engine.submit(p) for p in preps]:
        f.result()
    pool.recycle([b for f in futures for u in f.result()[0].units for b in frame_buffers(u.items)])


def run_workload(
    w: Workload, engine: Engine, prompts: PromptBuilder, pool, files: list[str], args, workers: int
) -> dict:
    """All jobs through decode → engine → result files; the workload's measurements."""
    cuda = engine.model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = copy.deepcopy(engine.stats)
    media_bytes = shm_budget(int(args.media_gb * 1e9))
    max_requests = engine.config.max_running * 3 // 2
    flow = Flow(
        w, engine, prompts, pool, files, args.jobs, args.results / w.name, workers,
        media_bytes, max_requests,
    )  # fmt: skip
    counts = flow.run()
    return _measure(w, _delta(engine.stats, before), counts, cuda)


def _measure(w: Workload, s: dict, counts: dict, cuda: bool) -> dict:
    wall = counts["wall_s"]
    secs = s["seconds"]
    decode_s = secs.get("decode", 0.0) + secs.get("sample", 0.0)  # forward, LM head, sampling
    llm_tokens = s["prefill_tokens"] + s["decode_tokens"]
    flops = (
        llm_tokens * LLM_FLOP_PER_TOKEN
        + s["sampled_tokens"] * LM_HEAD_FLOP
        + s["vision_patches"] * VIT_FLOP_PER_PATCH
    )
    shares = {
        "media": counts["media_exposed_s"],
        "encoders": secs.get("encode", 0.0),
        "prefill": secs.get("prefill", 0.0),
        "decode": decode_s,
    }
    shares = {k: v / wall for k, v in shares.items()}
    shares["other"] = 1.0 - sum(shares.values())
    metric = counts["amount"] / (wall / 3600)
    pool_busy = counts["decode_busy_s"] / (wall * counts["pool_workers"])
    return {
        "workload": w.name,
        "metric_name": w.metric,
        "metric": metric,
        "target": w.target,
        "vs_target": metric / w.target,
        **counts,
        "prefill_tok_s": s["prefill_tokens"] / secs["prefill"] if secs.get("prefill") else None,
        "decode_tok_s": s["decode_tokens"] / decode_s if decode_s else None,
        "output_tok_s_wall": s["sampled_tokens"] / wall,
        "pool_busy_share": pool_busy,  # of the pool's worker-seconds, spent decoding
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "useful_tflop": flops / 1e12,
        "mfu": flops / wall / (BF16_TFLOPS * 1e12),
        "stage_shares": shares,
        "engine": s,
    }


def _table(report: dict) -> None:
    print(f"\n{report['model']}; {report['device']}; pool {report['pool_workers']} workers")
    print(
        f"{'workload':8} {'jobs':>4} {'wall s':>8} {'metric':>26} {'×target':>7} "
        f"{'prefill/s':>9} {'decode/s':>9} {'steps':>6} {'peak GB':>7} {'MFU':>6}  "
        "media/encoders/prefill/decode/other % of wall"
    )
    for r in report["workloads"].values():
        peak = f"{r['peak_gpu_gb']:7.1f}" if r["peak_gpu_gb"] is not None else f"{'-':>7}"
        shares = "/".join(f"{100 * v:.0f}" for v in r["stage_shares"].values())
        print(
            f"{r['workload']:8} {r['jobs']:4d} {r['wall_s']:8.1f} "
            f"{r['metric']:10.1f} {r['metric_name']:>15} {r['vs_target']:7.3f} "
            f"{r['prefill_tok_s'] or 0:9.0f} {r['decode_tok_s'] or 0:9.0f} "
            f"{r['engine']['decode_steps']:6d} {peak} "
            f"{r['mfu']:6.1%}  {shares}"
        )
    if ref := report.get("reference"):
        print(
            f"transformers NemotronH generate, {ref['batch']}×{ref['prompt_tokens']} tokens + "
            f"{ref['new_tokens']} new: {ref['video_hours_per_hour']:.1f} video-h/h equivalent, "
            f"prefill {ref['prefill_tok_s']:.0f} tok/s, decode {ref['decode_tok_s']:.0f} tok/s"
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    ap.add_argument("--model", choices=["full", "demo"], default="full")
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--small", action="store_true", help="short inputs (CPU smoke run)")
    ap.add_argument("--reference", action="store_true", help="add transformers' generate floor")
    ap.add_argument(
        "--media-gb", type=float, default=16.0, help="decoded media held in host memory at most"
    )
    ap.add_argument("--gpu-memory-gb", type=float, default=None, help="GPU_MEMORY_GB (GiB)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--results", type=Path, default=ROOT / ".cache" / "bench" / "results")
    args = ap.parse_args(argv)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    files = {n: workload_files(n, args.cache, args.small) for n in names}
    model, prompts, note = load(args.model)
    device = model.device
    config = replace(engine_config(model, args.gpu_memory_gb), profile=True)
    engine = Engine(model, prompts.tokenizer, config)
    engine.start()
    workers = os.cpu_count() or 1
    report = {
        "model": note,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "pool_workers": workers,
        "engine": {k: v for k, v in vars(engine.config).items()},
        "workloads": {},
    }
    try:
        with UnitPool(workers) as pool:
            for n in names:
                w = WORKLOADS[n]
                if args.small:
                    w = replace(w, opts=replace(w.opts, image_budget=SMALL_PAGE_PATCHES))
                warm_up(w, engine, prompts, pool, workers, files[n])
                row = run_workload(w, engine, prompts, pool, files[n], args, workers)
                report["workloads"][n] = row
                print(f"W-{n}: {row['metric']:.2f} {w.metric} in {row['wall_s']:.1f} s", flush=True)
    finally:
        engine.close()
    if args.reference:
        from benchmarks.e2e_reference import reference_floor

        llm_config = model.config.llm
        del engine, model
        gc.collect()  # our weights and cache must be gone before the reference model loads
        if device.type == "cuda":
            torch.cuda.empty_cache()
        sizes = {"batch": 2, "prompt_len": 64, "new_tokens": 8} if args.small else {}
        report["reference"] = reference_floor(llm_config, str(device), **sizes)
    if out := os.environ.get("OUT"):
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "e2e.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)
    _table(report)
    return report


if __name__ == "__main__":
    main()
