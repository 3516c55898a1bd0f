"""Where the GPU time of a decode step, a prefill forward, a W-video encode or the routed experts
goes, kernel by kernel (GPU).

    python -m benchmarks.profile_gpu decode [--batch 64 256] [--ctx 1024] [--precision fp8]
    python -m benchmarks.profile_gpu prefill [--lens 4096 4096 4096 4096] [--precision fp8]
    python -m benchmarks.profile_gpu encode [--clips 1 4]
    python -m benchmarks.profile_gpu moe [--tokens 64 16384] [--precision nvfp4]

decode: the full-size LLM in the layout of `precision` (random weights, the KV cache in the
model's own KV dtype), `ctx` cached tokens per sequence, a few eager decode steps (embed, 52
layers, LM head); eager so each kernel shows (the CUDA-graph step is benchmarks.llm's number).
prefill: the full-size LLM in the layout of `precision` (random weights, the KV cache in the
model's own KV dtype), one prefill step of sequences of `lens` tokens from empty slots (W-video
requests are ≈ 5.2 K tokens; the engine packs several into one step).
encode: the full-size Omni model and synthetic W-video clips shaped as the media pool hands
them over (60 uint8 720p frames in shared memory, channels last; 60 s of audio as two mel
clips): `encode_items` + `splice_prompt_embeds` (EVS 0.5) for `clips` clips at once, as the
engine's admission runs them (prompts tokenized beforehand, as `Engine.submit` does).
Also times the host-to-device copy of one clip's frames behind queued GPU work, from pageable
memory and through pinned memory (`host_to_device`, what the engine does): how long the
host is held, and whether the copy overlapped the work.

moe: the routed experts alone at full size, with benchmarks.kernels_quant's random weights and
routing (bf16: the FP8 weights dequantized, as there), at each token count; after the tables
one more call of each between cudaProfilerStart and Stop, the calls Nsight Compute profiles
with `ncu --profile-from-start off [--set full] python -m benchmarks.profile_gpu moe ...`
(how session 14 found the NVFP4 decode kernel's L1 traffic and scale loads).

Each prints the step's wall time, the kernels' total GPU time (the gap is GPU idle: host
work, synchronous copies) and the kernels holding the most GPU time.
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.llm import decode_inputs, timed
from media.items import AudioItem, VideoItem
from media.mel import N_MELS
from media.resize import video_grid
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.fullsize import build_fullsize, build_fullsize_omni
from workers.model.host_copy import host_to_device
from workers.model.quant import BF16, NVFP4, PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3
TOP = 30
GPU_WORK_MATMULS = 200  # ≈ 40 ms of queued GPU work on an H100 (137 GFLOP each), ahead of a copy
H, W, FRAMES, AUDIO_S = 720, 1280, 60, 60


def kernel_table(fn, title: str) -> str:
    """Profile `REPEATS` calls of fn (after a timed warm-up); the per-call kernel table."""
    ms = timed(fn, REPEATS)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPEATS):
            fn()
        torch.cuda.synchronize()
    rows = sorted(
        (
            (e.device_time_total / REPEATS, e.count // REPEATS, e.key)
            for e in prof.key_averages()
            if e.device_time_total > 0
        ),
        reverse=True,
    )
    total = sum(r[0] for r in rows)
    lines = [
        f"\n{title}: {ms:.2f} ms wall, kernels {total / 1e3:.2f} ms GPU",
        f"{'GPU ms':>8} {'share':>6} {'calls':>6}  kernel",
    ]
    for us, calls, name in rows[:TOP]:
        lines.append(f"{us / 1e3:8.3f} {us / total:6.1%} {calls:6d}  {name[:110]}")
    return "\n".join(lines + [sync_sites(fn)])


def sync_sites(fn) -> str:
    """Where one call of fn made the host wait for the GPU (torch's sync debug mode: `.item()`,
    a copy to or from pageable memory, `nonzero`...), by the innermost line of this repository
    on the stack. After each such wait the GPU runs only as fast as the host launches, until
    its queue fills again."""
    sites: Counter[str] = Counter()

    def note(message, *_):
        if "synchroniz" in str(message):
            ours = [f for f in traceback.extract_stack() if f.filename.startswith(str(ROOT))]
            sites[f"{Path(ours[-2].filename).relative_to(ROOT)}:{ours[-2].lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    listed = ", ".join(f"{site} ×{n}" for site, n in sites.most_common())
    return f"host waits for the GPU in one call: {sum(sites.values())} ({listed or 'none'})"


def profile_decode(llm, bsz: int, ctx: int) -> str:
    cache, ids, batch = decode_inputs(llm, bsz, ctx)
    return kernel_table(
        lambda: llm.logits(llm(llm.embed(ids), batch, cache)), f"decode batch {bsz}, ctx {ctx}"
    )


def profile_prefill(llm, lens: list[int]) -> str:
    cfg = llm.config
    total = sum(lens)
    cache = HybridCache(cfg, len(lens), total, max(lens), "cuda", torch.bfloat16, llm.kv_dtype)
    slots = list(range(len(lens)))
    cache.reserve(slots, lens)
    x = torch.randn(total, cfg.hidden_size, device="cuda", dtype=torch.bfloat16) * 0.02
    batch = ForwardBatch.build(lens, slots, [0] * len(lens), "cuda")  # from the first token
    return kernel_table(lambda: llm(x, batch, cache), f"prefill {lens} tokens, {llm.precision}")


def moe_calls(precision: str, tokens: list[int]) -> list[tuple[str, object]]:
    """(title, call) of the routed experts in `precision` at each token count."""
    from benchmarks import kernels_quant as kq
    from kernels.moe_experts import moe_experts
    from kernels.moe_experts_fp8 import moe_experts_fp8
    from kernels.moe_experts_nvfp4 import moe_experts_nvfp4

    sh, dev = kq.FULL, torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    if precision == NVFP4:
        fn, weights = moe_experts_nvfp4, kq.moe_nvfp4_weights(sh, dev, g)
    else:
        fn, weights = moe_experts_fp8, kq.moe_fp8_weights(sh, dev, g)
        if precision == BF16:
            fn, weights = moe_experts, kq.moe_bf16_twin(weights)
    calls = []
    for T in tokens:
        x = torch.randn(T, sh.D, device=dev, generator=g).to(torch.bfloat16)
        args = (x, *weights, *kq._routing(sh, T, dev, g))
        calls.append((f"{precision} routed experts, T = {T}", lambda a=args: fn(*a)))
    return calls


def profile_moe(precision: str, tokens: list[int]) -> None:
    calls = moe_calls(precision, tokens)
    for title, call in calls:
        print(kernel_table(call, title), flush=True)
    torch.cuda.profiler.start()  # the window `ncu --profile-from-start off` profiles
    for _, call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def synthetic_clip(gen: torch.Generator) -> VideoItem:
    """One W-video clip as the pool delivers it: frames [30, 2, 3, H, W] (a channels-last
    view of shared memory), a 60 s soundtrack as two 30 s mel clips."""
    frames = torch.randint(0, 256, (FRAMES, H, W, 3), generator=gen, dtype=torch.uint8)
    tubelets = frames.share_memory_().view(-1, 2, H, W, 3).permute(0, 1, 4, 2, 3)
    samples = [30 * 16000, 30 * 16000]
    audio = AudioItem([torch.randn(n // 160, N_MELS, generator=gen) for n in samples], sum(samples),
                      samples)  # fmt: skip
    stamps = [float(k) for k in range(FRAMES)]
    return VideoItem(tubelets, video_grid(H, W), stamps, audio=audio, end_s=float(FRAMES))


def profile_encode(model, prompts, clips: list[VideoItem]) -> str:
    from workers.model.omni import encode_items, prompt_tokens, splice_prompt_embeds
    from workers.model.prompt import task_text

    prompt = prompts.render(clips[:1], task_text("caption", None, "video"), False)
    tokens = [prompt_tokens(prompts.tokenizer, prompt, [c]) for c in clips]  # caller threads

    def admit():
        encoded = encode_items(model, clips)
        for t in tokens:
            splice_prompt_embeds(model, t, encoded, 0.5)

    return kernel_table(admit, f"encode + splice, {len(clips)} clip(s) at once")


def h2d_ms(clip: VideoItem, copy) -> tuple[float, float]:
    """copy(frames) of one clip's frames behind GPU_WORK_MATMULS queued matmuls -> (ms the
    host took to return from the copy, ms until the GPU had done both). A copy that waits for
    the queued work returns after it; one queued behind it returns after its own host part."""
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    host, total = [], []
    for _ in range(REPEATS + 1):  # the first: the pinned allocator's blocks
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(GPU_WORK_MATMULS):
            x @ x
        t1 = time.perf_counter()
        copy(clip.tubelets)
        t2 = time.perf_counter()
        torch.cuda.synchronize()
        host.append((t2 - t1) * 1e3)
        total.append((time.perf_counter() - t0) * 1e3)
    return min(host[1:]), min(total[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    dec = sub.add_parser("decode")
    dec.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    dec.add_argument("--ctx", type=int, default=1024)
    dec.add_argument("--precision", choices=PRECISIONS, default=BF16)
    pre = sub.add_parser("prefill")
    pre.add_argument("--lens", type=int, nargs="+", default=[4096] * 4)
    pre.add_argument("--precision", choices=PRECISIONS, default=BF16)
    moe = sub.add_parser("moe")
    moe.add_argument("--tokens", type=int, nargs="+", default=[64, 16384])
    moe.add_argument("--precision", choices=PRECISIONS, default=NVFP4)
    enc = sub.add_parser("encode")
    enc.add_argument("--clips", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.no_grad():
        if args.what == "decode":
            llm = build_fullsize(precision=args.precision)
            for bsz in args.batch:
                print(profile_decode(llm, bsz, args.ctx), flush=True)
                torch.cuda.empty_cache()
            return
        if args.what == "prefill":
            print(profile_prefill(build_fullsize(precision=args.precision), args.lens))
            return
        if args.what == "moe":
            profile_moe(args.precision, args.tokens)
            return
        from workers.model.prompt import PromptBuilder
        from workers.pipeline import demo_checkpoint_dir

        prompts = PromptBuilder.from_dir(demo_checkpoint_dir())  # tokenizer, chat template
        model = build_fullsize_omni()
        gen = torch.Generator().manual_seed(0)
        clips = [synthetic_clip(gen) for _ in range(max(args.clips))]
        dev = torch.device("cuda")
        mb = clips[0].tubelets.nbytes / 2**20
        for name, copy in (("pageable", lambda t: t.to("cuda")),
                           ("through pinned memory", lambda t: host_to_device(t, dev))):
            host, total = h2d_ms(clips[0], copy)
            print(f"one clip's frames to the GPU ({mb:.0f} MiB, {name}) behind "
                  f"{GPU_WORK_MATMULS} queued 4096² matmuls: the host returned after "
                  f"{host:.1f} ms, both done after {total:.1f} ms")  # fmt: skip
        for n in args.clips:
            print(profile_encode(model, prompts, clips[:n]), flush=True)


if __name__ == "__main__":
    main()
