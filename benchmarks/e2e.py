"""W-video, W-doc and W-audio end to end (docs/performance.md "Standard workloads"), through
the shipped pipeline.

    python -m benchmarks.e2e [--workload video|doc|audio|all] [--model full|demo]
                             [--jobs N | --jobs video=N,doc=N,audio=N]
                             [--precision bf16|fp8|nvfp4] [--gpu-memory-gb N] [--small]
                             [--via-cli] [--reference] [--gpu-busy] [--cache DIR]
                             [--results DIR]

Every job is handed to `workers.pipeline.Pipeline` at once, as the GPU worker and `omnibatch
run` do: its job threads decode the media in the process pool (one worker per core) ahead of
the GPU as far as the media budget allows, the engine batches all jobs' model calls, and each
job's result is written as JSON as it finishes (`jobNNNN.json`, the line `omnibatch run`
writes). Wall time runs from the first job submitted to the last result written.
`--via-cli`: after each workload's run, the same jobs again through `omnibatch run`'s own
runner, on the same warm pipeline (`local_run.run_all`: every file in flight at once, a JSON
line per file into `<workload>.jsonl` as each finishes; report["via_cli"]): for W-video that
is `omnibatch run --task caption --max-tokens 256 --temperature 0 --evs-rate 0.5 FILE…` less
the model load (no full-size checkpoint exists on disk here).

Requests are the API's own (JobCreate), greedy; every model call generates its max_tokens
(EOS ignored: PipelineConfig.ignore_eos): 256 a W-video clip, 512 a W-doc page (pages
rendered at 1024×1536: PipelineConfig.image_budget), ≈ 13 a second of a W-audio unit.

`--model full`: the real-size model with random bf16 weights on CUDA; the real tokenizer is
not available here, so prompts use the demo checkpoint's tokenizer and chat template (its
special-token ids match the real config; text tokens differ, token counts barely).
`--model demo`: the tiny demo checkpoint (CPU smoke run; its FLOP counts are still the real
model's, so its MFU means nothing). `--precision fp8|nvfp4`: the LLM in the layout of NVIDIA's
FP8 or NVFP4 checkpoint (the full model built so, the demo quantized at load); the report's
`precision` says what ran. `--small` shrinks the inputs (see e2e_inputs) and
renders pages near 1 K patches.
`--reference` adds, after our model is freed, transformers' NemotronH `generate` floor.
`--gpu-busy` profiles each timed run's kernels and reports, per engine stage, the share of
its time with a kernel running (row["gpu_busy"]; benchmarks/gpu_busy.py): a low share means
the GPU waited for the host. The profiler's own overhead slows that run.
`--gpu-memory-gb N` plans the engine's memory under N GiB, as the worker's GPU_MEMORY_GB
(default: 95 % of the card), so workloads compare before and after on one card.

Counting (spec "Counting"): 5.75 GFLOP per LLM token fed (prefill or decode), + 0.7 GFLOP LM
head per sampled token, 1.43 GFLOP per ViT patch position (a 2-frame tubelet shares one);
the audio encoder has no spec figure and is not counted. MFU = those FLOPs / wall / 767
TFLOP/s. Stage shares come from the engine's synchronised stage timers (EngineConfig.profile):
"media" is the wall time before the first job's media reached the engine (decode later
overlaps GPU work; the pool's CPU seconds and their share of its worker-seconds are reported
beside; not measured with `--via-cli`), "other" is the rest (engine idle, scheduling, result
writing).
Prints a short table last; full JSON to $OUT/e2e.json when OUT is set.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.common import BF16_TFLOPS, LLM_FLOP_PER_TOKEN
from benchmarks.e2e_inputs import AUDIO_S, PAGE_H, PAGE_W, SMALL_AUDIO_S, workload_files
from benchmarks.gpu_busy import GpuBusy
from benchmarks.triton_compiles import TritonCompiles
from contract.schemas import JobCreate
from media.resize import PATCH
from workers.engine.engine import EngineConfig, engine_config
from workers.engine.stats import StageStats
from workers.local_run import result_line, run_all
from workers.media_units import CLIPS_PER_UNIT
from workers.model.checkpoint_info import read_checkpoint_info
from workers.model.prompt import PromptBuilder
from workers.pipeline import ModelInfo, Pipeline, PipelineConfig, demo_checkpoint_dir

LM_HEAD_FLOP, VIT_FLOP_PER_PATCH = 0.7e9, 1.43e9
ROOT = Path(__file__).resolve().parent.parent
SMALL_PAGE_PATCHES = 1024  # --small: pages rendered near 1 K patches
# W-doc renders its 1024×1536-point pages at 1024×1536 pixels (docs/performance.md: "pages
# rendered at 1024×1536", ≈ 14 ViT TFLOP a page): a 64×96 grid, where the service's default
# budget of 13 312 patches would render them at ≈ 1504×2256.
DOC_PAGE_PATCHES = (PAGE_W // PATCH) * (PAGE_H // PATCH)
WARM_CALLS = 32  # model calls of the warm-up, about


@dataclass(frozen=True)
class Workload:
    name: str
    fields: dict  # of its JobCreate, generation aside
    metric: str
    target: float

    def request(self, max_tokens: int) -> JobCreate:
        generation = {"max_tokens": max_tokens, "temperature": 0.0}
        return JobCreate.model_validate(self.fields | {"generation": generation})

    def max_tokens(self, small: bool) -> int:
        """Per model call: a clip, a page, or a unit of audio (5 minutes at most)."""
        if self.name == "video":
            return 256
        if self.name == "doc":
            return 512
        unit_s = min(SMALL_AUDIO_S if small else AUDIO_S, CLIPS_PER_UNIT * 30)
        return round(13 * unit_s)  # ≈ 13 tokens per audio second

    def amount(self, usage: dict) -> float:
        """The metric's numerator for one job: hours of video or audio, or pages."""
        if self.name == "doc":
            return usage["pages"]
        return usage["video_seconds" if self.name == "video" else "audio_seconds"] / 3600


WORKLOADS = {
    "video": Workload(
        "video",
        {"task": "caption", "video": {"fps": 1.0, "max_frames": 512, "evs_rate": 0.5}},
        "video-hours/hour", 300.0,
    ),
    "doc": Workload(
        "doc",
        {"task": "ask", "prompt": "Convert this page to markdown.", "media_type": "document"},
        "pages/hour", 40000.0,
    ),
    "audio": Workload(
        "audio", {"task": "transcribe", "media_type": "audio"}, "audio-hours/hour", 800.0,
    ),
}  # fmt: skip


def load(kind: str, precision: str = "bf16") -> tuple:
    """(OmniModel, PromptBuilder, note) for `--model full|demo` at `--precision`."""
    from workers.pipeline import demo_checkpoint_dir

    demo_dir = demo_checkpoint_dir()
    prompts = PromptBuilder.from_dir(demo_dir)
    if kind == "full":
        from workers.model.fullsize import build_fullsize_omni

        note = (
            f"full-size random {precision} weights; demo tokenizer and chat template "
            "(real one absent)"
        )
        return build_fullsize_omni(precision=precision), prompts, note
    from workers.model.loader import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    quantize = None if precision == "bf16" else precision
    model = load_model(demo_dir, device, quantize=quantize)[0]
    return model, prompts, "demo checkpoint (tiny, random)"


def bench_pipeline(
    model, prompts: PromptBuilder, engine: EngineConfig, note: str, config: PipelineConfig,
    demo: bool,
) -> Pipeline:
    """The pipeline the worker runs, around a model `load` built (no checkpoint on disk)."""
    # the demo checkpoint's files (stop ids, generation defaults) with the model's own config
    info = replace(read_checkpoint_info(demo_checkpoint_dir()), model=model.config)
    model_info = ModelInfo(note, None, model.llm.precision)
    return Pipeline(model, info, prompts, model_info, demo, engine, config)


def _delta(after: StageStats, before: StageStats) -> dict:
    peaks = ("peak_unprefilled", "peak_batch")  # high-water marks (warm-up included)
    per_stage = ("seconds", "launch_seconds", "thread_seconds", "ooms")
    counts = [k for k in vars(after) if k not in ("profile", "windows", *per_stage, *peaks)]
    out = {k: getattr(after, k) - getattr(before, k) for k in counts}
    out |= {k: getattr(after, k) for k in peaks}
    for t in per_stage:
        now, then = getattr(after, t), getattr(before, t)
        out[t] = {k: v - then.get(k, 0) for k, v in now.items()}
    return out


def warm_up(w: Workload, pipeline: Pipeline, files: list[str], workers: int) -> None:
    """Jobs of 4 tokens a model call, about WARM_CALLS calls but at most one job per pool
    worker, before the clock runs: the encoder, full prefill chunks and decode kernels meet
    this workload's shapes once."""
    request = w.request(4)
    first = pipeline.submit(request, files[0]).result()
    calls = len(first.segments or [first])
    more = min(workers, -(-WARM_CALLS // calls)) - 1
    for job in [pipeline.submit(request, files[(i + 1) % len(files)]) for i in range(more)]:
        job.result()


class _FirstSubmit:
    """A progress callback noting when the first job had its media with the engine."""

    def __init__(self):
        self.at: float | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "decoding" and done == total and self.at is None:
            self.at = time.perf_counter()


def _submit_all(pipeline: Pipeline, request: JobCreate, paths: list[Path], out: Path):
    """Every job submitted at once, each result written as it finishes -> (result lines,
    seconds until the first job's media reached the engine, wall seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    first = _FirstSubmit()
    t0 = time.perf_counter()
    jobs = {}
    for j, path in enumerate(paths):
        job = pipeline.submit(request, path, first)
        jobs[job.future] = (j, path, job)
    lines = []
    for f in as_completed(jobs):
        j, path, job = jobs[f]
        lines.append(result_line(path, job))
        tmp = out / f".job{j:04d}.json"
        tmp.write_text(json.dumps(lines[-1]))
        tmp.rename(out / f"job{j:04d}.json")
    return lines, first.at - t0, time.perf_counter() - t0


def _via_cli(pipeline: Pipeline, request: JobCreate, paths: list[Path], out: Path):
    """The same jobs through `omnibatch run`'s runner -> (its lines, None, wall seconds)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with out.open("w") as f:
        run_all(pipeline, paths, request, f)
    wall = time.perf_counter() - t0
    return [json.loads(line) for line in out.read_text().splitlines()], None, wall


def pool_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children so far: the pool's workers."""
    me, total = os.getpid(), 0
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text() if d.name.isdigit() else ""
        except OSError:  # gone meanwhile
            continue
        f = stat.rsplit(")", 1)[-1].split()
        if len(f) > 12 and int(f[1]) == me:
            total += int(f[11]) + int(f[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def job_counts(text: str, names: list[str]) -> dict[str, int]:
    """`--jobs`: one count for every workload ("64"), or one each ("video=64,doc=8,audio=8";
    a workload run but not named there is an error)."""
    if "=" not in text:
        return dict.fromkeys(names, int(text))
    counts = {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    if missing := [n for n in names if n not in counts]:
        raise SystemExit(f"--jobs names no count for {', '.join(missing)}")
    return {n: counts[n] for n in names}


def run_workload(
    w: Workload, pipeline: Pipeline, files: list[str], jobs: int, args, via_cli: bool = False
) -> dict:
    """All jobs through the pipeline (through `omnibatch run`'s runner with `via_cli`); the
    workload's measurements."""
    cuda = pipeline.model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    allocator = allocator_counts(cuda)
    before = copy.deepcopy(pipeline.engine.stats)
    pipeline.media_budget.reset_peak()
    request = w.request(w.max_tokens(args.small))
    paths = [Path(files[j % len(files)]) for j in range(jobs)]
    cpu = pool_cpu_s()
    busy = GpuBusy() if args.gpu_busy and cuda else None
    with TritonCompiles() as compiles, busy or contextlib.nullcontext():
        if via_cli:
            jsonl = args.results / f"{w.name}.jsonl"
            lines, exposed, wall = _via_cli(pipeline, request, paths, jsonl)
        else:
            lines, exposed, wall = _submit_all(pipeline, request, paths, args.results / w.name)
    if failed := [line for line in lines if line["status"] != "succeeded"]:
        raise RuntimeError(f"W-{w.name}: {len(failed)} jobs failed, e.g. {failed[0]}")
    counts = {
        "wall_s": wall,
        "jobs": len(lines),
        "pool_workers": pipeline.media.num_workers,
        "units": sum(len(line["output"].get("segments") or [0]) for line in lines),
        "amount": sum(w.amount(line["usage"]) for line in lines),
        "output_tokens": sum(line["usage"]["output_tokens"] for line in lines),
        "pool_cpu_s": pool_cpu_s() - cpu,
        "media_exposed_s": exposed,
        "peak_media_gb": pipeline.media_budget.peak / 1e9,
        "allocator": {k: v - allocator[k] for k, v in allocator_counts(cuda).items()},
        "expandable_reserved_gib": expandable_reserved(cuda) / 2**30,
        "triton_compiles": compiles.summary(),  # shapes the warm-up did not meet
        "gpu_busy": busy.by_stage(pipeline.engine.stats.windows[len(before.windows) :])
        if busy
        else None,
    }
    return _measure(w, _delta(pipeline.engine.stats, before), counts, cuda)


def allocator_counts(cuda: bool) -> dict[str, int]:
    """torch's caching-allocator counters: cudaMalloc / cudaFree calls, and the retries after
    freeing its cache (an allocation that met the cap): a workload near GPU_MEMORY_GB pays
    for these in synchronisations."""
    names = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_ooms")
    stats = torch.cuda.memory_stats() if cuda else {}
    return {k: int(stats.get(k, 0)) for k in names}


def expandable_reserved(cuda: bool) -> int:
    """Bytes the allocator holds in segments that grow in place (the engine turns them on for
    what it allocates after the weights, unless PYTORCH_CUDA_ALLOC_CONF says otherwise)."""
    segments = torch.cuda.memory_snapshot() if cuda else []
    return sum(seg["total_size"] for seg in segments if seg.get("is_expandable"))


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
    shares = {k: None if v is None else v / wall for k, v in shares.items()}
    shares["other"] = 1.0 - sum(v for v in shares.values() if v is not None)
    metric = counts["amount"] / (wall / 3600)
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
        "tokens_per_prefill_forward": s["prefill_tokens"] / max(1, s["prefill_forwards"]),
        # of the pool's worker-seconds, spent on CPU (decoding)
        "pool_cpu_share": counts["pool_cpu_s"] / (wall * counts["pool_workers"]),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        # what GPU_MEMORY_GB caps: the allocator's reserve, in GiB like the setting
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "useful_tflop": flops / 1e12,
        "mfu": flops / wall / (BF16_TFLOPS * 1e12),
        "stage_shares": shares,
        "engine": s,
    }


def _table(report: dict) -> None:
    print(
        f"\n{report['model']}; {report['precision']}; {report['device']}; "
        f"pool {report['pool_workers']} workers"
    )
    print(
        f"{'workload':8} {'jobs':>4} {'wall s':>8} {'metric':>26} {'×target':>7} "
        f"{'prefill/s':>9} {'decode/s':>9} {'steps':>6} {'peak GB':>7} {'rsv GiB':>7} {'MFU':>6}  "
        "media/encoders/prefill/decode/other % of wall"
    )
    cli = {f"{k} cli": r for k, r in report["via_cli"].items()}  # no media share there
    for name, r in {**report["workloads"], **cli}.items():
        peak = f"{r['peak_gpu_gb']:7.1f}" if r["peak_gpu_gb"] is not None else f"{'-':>7}"
        rsv = r["peak_reserved_gib"]
        peak += f" {rsv:7.1f}" if rsv is not None else f" {'-':>7}"
        shares = "/".join(
            "-" if v is None else f"{100 * v:.0f}" for v in r["stage_shares"].values()
        )
        print(
            f"{name:8} {r['jobs']:4d} {r['wall_s']:8.1f} "
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
    ap.add_argument("--jobs", default="64", help="N, or video=N,doc=N,audio=N")
    ap.add_argument("--precision", choices=["bf16", "fp8", "nvfp4"], default="bf16")
    ap.add_argument("--small", action="store_true", help="short inputs (CPU smoke run)")
    ap.add_argument("--via-cli", action="store_true", help="also through omnibatch run's runner")
    ap.add_argument("--reference", action="store_true", help="add transformers' generate floor")
    ap.add_argument(
        "--media-gb", type=float, default=16.0, help="decoded media held in host memory at most"
    )
    ap.add_argument("--gpu-memory-gb", type=float, default=None, help="GPU_MEMORY_GB (GiB)")
    ap.add_argument(
        "--gpu-busy",
        action="store_true",
        help="profile the timed runs' kernels: each stage's share of time with one running "
        "(benchmarks/gpu_busy.py; CUDA only, adds profiler overhead)",
    )
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--results", type=Path, default=ROOT / ".cache" / "bench" / "results")
    args = ap.parse_args(argv)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    jobs = job_counts(args.jobs, names)
    files = {n: workload_files(n, args.cache, args.small) for n in names}
    model, prompts, note = load(args.model, args.precision)
    device = model.device
    engine = replace(engine_config(model, args.gpu_memory_gb), profile=True)
    config = PipelineConfig(  # every job of a run in flight at once, pages at the workload's
        max_jobs=max(jobs.values()),  # size, every model call to its max_tokens
        media_bytes=int(args.media_gb * 1e9),
        image_budget=SMALL_PAGE_PATCHES if args.small else DOC_PAGE_PATCHES,
        ignore_eos=True,
    )
    pipeline = bench_pipeline(model, prompts, engine, note, config, args.model == "demo")
    workers = pipeline.media.num_workers
    report = {
        "model": note,
        "precision": model.llm.precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "pool_workers": workers,
        "engine": dict(vars(engine)),
        "workloads": {},
        "via_cli": {},
    }
    try:
        for n in names:
            w = WORKLOADS[n]
            warm_up(w, pipeline, files[n], workers)
            row = run_workload(w, pipeline, files[n], jobs[n], args)
            report["workloads"][n] = row
            e = row["engine"]
            print(f"W-{n}: {row['metric']:.2f} {w.metric} in {row['wall_s']:.1f} s; engine idle "
                  f"{e['idle_seconds']:.1f} s, {e['lone_decode_steps']} of {e['decode_steps']} "
                  f"decode steps with nothing else to run; allocator "
                  f"{row['allocator']}, OOMs {e.get('ooms')}, "
                  f"{row['expandable_reserved_gib']:.2f} GiB expandable, Triton compiles "
                  f"{row['triton_compiles']}", flush=True)  # fmt: skip
            if row["gpu_busy"]:
                print("kernel time in each stage: " + ", ".join(
                    f"{s} {b['kernel_seconds']:.2f} of {b['seconds']:.2f} s ({b['share']:.0%})"
                    for s, b in row["gpu_busy"].items()), flush=True)  # fmt: skip
            if args.via_cli:
                cli = run_workload(w, pipeline, files[n], jobs[n], args, via_cli=True)
                report["via_cli"][n] = cli
                print(f"W-{n} through omnibatch run's runner: {cli['metric']:.2f}; Triton "
                      f"compiles {cli['triton_compiles']}", flush=True)  # fmt: skip
    finally:
        pipeline.close()
    if args.reference:
        from benchmarks.e2e_reference import reference_floor

        llm_config = model.config.llm
        del pipeline, model
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
