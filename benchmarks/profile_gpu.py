"""Where the GPU time of a decode step or of a W-video encode goes, kernel by kernel (GPU).

    python -m benchmarks.profile_gpu decode [--batch 64 256] [--ctx 1024]
    python -m benchmarks.profile_gpu encode [--clips 1 4]

decode: the full-size LLM (random bf16 weights), `ctx` cached tokens per sequence, a few
eager decode steps (embed, 52 layers, LM head); eager so each kernel shows (the CUDA-graph
step is benchmarks.llm's number).
encode: the full-size Omni model and synthetic W-video clips shaped as the media pool hands
them over (60 uint8 720p frames in shared memory, channels last; 60 s of audio as two mel
clips): `encode_items` + `splice_prompt_embeds` (EVS 0.5) for `clips` clips at once, as the
engine's admission runs them (prompts tokenized beforehand, as `Engine.submit` does).
Also times the host-to-device copy of one clip's frames alone.

Each prints the step's wall time, the kernels' total GPU time (the gap is GPU idle: host
work, synchronous copies) and the kernels holding the most GPU time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.llm import decode_inputs, timed
from media.items import AudioItem, VideoItem
from media.mel import N_MELS
from media.resize import video_grid
from workers.model.fullsize import build_fullsize, build_fullsize_omni

REPEATS = 3
TOP = 22
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
    return "\n".join(lines)


def profile_decode(llm, bsz: int, ctx: int) -> str:
    cache, ids, batch = decode_inputs(llm, bsz, ctx)
    return kernel_table(
        lambda: llm.logits(llm(llm.embed(ids), batch, cache)), f"decode batch {bsz}, ctx {ctx}"
    )


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


def h2d_ms(clip: VideoItem) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(REPEATS):
        clip.tubelets.to("cuda")
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / REPEATS * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    dec = sub.add_parser("decode")
    dec.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    dec.add_argument("--ctx", type=int, default=1024)
    enc = sub.add_parser("encode")
    enc.add_argument("--clips", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.no_grad():
        if args.what == "decode":
            llm = build_fullsize()
            for bsz in args.batch:
                print(profile_decode(llm, bsz, args.ctx), flush=True)
                torch.cuda.empty_cache()
            return
        from workers.model.prompt import PromptBuilder
        from workers.pipeline import demo_checkpoint_dir

        prompts = PromptBuilder.from_dir(demo_checkpoint_dir())  # tokenizer, chat template
        model = build_fullsize_omni()
        gen = torch.Generator().manual_seed(0)
        clips = [synthetic_clip(gen) for _ in range(max(args.clips))]
        mb = clips[0].tubelets.nbytes / 2**20
        print(f"one clip's frames to the GPU ({mb:.0f} MiB, pageable): {h2d_ms(clips[0]):.1f} ms")
        for n in args.clips:
            print(profile_encode(model, prompts, clips[:n]), flush=True)


if __name__ == "__main__":
    main()
