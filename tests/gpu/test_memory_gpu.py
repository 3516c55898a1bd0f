"""The memory plan's workspace formulas against the GPU (run with `pytest -m gpu -s`).

The full-size model (workers/model/fullsize.py, random bf16 weights) runs each stage at
known sizes; the peak of `torch.cuda.max_memory_allocated` above what existed before must
stay under the formula the plan sizes that stage with (workspace.py, vision.py,
kernels/moe_experts.py), give or take `SLOP` (small tensors the formulas do not itemize; the
plan's slack holds them), and the formula not far above it (`MARGIN`). Each stage runs once
first, so kernel compilation and library workspaces are not counted. The CUDA context and friends,
outside torch, must stay under `runtime_bytes(card)`. Measurements go to $OUT/memory_gpu.json.
"""

from __future__ import annotations

import gc
import json
import os

import pytest
import torch

from kernels import moe_experts
from media.items import AudioItem, ImageItem, VideoItem
from media.resize import video_pixels
from workers.engine.memory_plan import (
    CARD_SHARE,
    SLACK_BYTES,
    GiB,
    encode_pieces,
    graph_pool,
    graph_sizes,
    plan_for,
    runtime_bytes,
    weight_bytes,
)
from workers.engine.request import Request, SamplingParams
from workers.engine.runner import ModelRunner
from workers.engine.scheduler import PrefillChunk
from workers.engine.workspace import StageCosts
from workers.model import ops
from workers.model.audio import encode_audios
from workers.model.cache import HybridCache
from workers.model.fullsize import build_fullsize_omni
from workers.model.omni import encode_items
from workers.model.vision import encode_visual, resize_frame_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

MiB = 1 << 20
MARGIN = 0.5  # a formula may overstate its stage's peak by this share, plus SLOP
SLOP = 48 * MiB  # small tensors, allocator rounding
RESULTS: list[dict] = []


LOADED: dict[str, int] = {}


@pytest.fixture(scope="module")
def model():
    m = build_fullsize_omni()
    torch.cuda.empty_cache()
    LOADED["reserved"] = torch.cuda.memory_reserved()  # the weights as allocated
    free, total = torch.cuda.mem_get_info()
    LOADED["runtime"] = total - free - LOADED["reserved"]  # before any stage loaded its kernels
    yield m
    if out := os.environ.get("OUT"):
        with open(os.path.join(out, "memory_gpu.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)


@pytest.fixture(scope="module")
def costs(model) -> StageCosts:
    return StageCosts.of(model.config, 2)


def peak(fn):
    """(bytes allocated at fn's peak above what existed before it, fn's result). Without
    autograd, as the engine runs every stage: with it, the ViT's and the audio encoder's
    forwards kept every layer's activations (5.3 GB for four 1 034-token images)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, out


def check(stage: str, size: str, fn, formula: int, margin: float = MARGIN) -> None:
    with torch.no_grad():
        fn()  # compile kernels, create library workspaces
    measured, _ = peak(fn)
    RESULTS.append(dict(stage=stage, size=size, measured=measured, formula=formula))
    print(f"{stage:10} {size:28} measured {measured / MiB:9.1f} MiB  formula {formula / MiB:9.1f}"
          f" MiB  ratio {formula / max(measured, 1):.2f}")  # fmt: skip
    assert measured <= formula + SLOP, f"{stage} {size}: {measured} > formula {formula}"
    assert formula <= measured * (1 + margin) + SLOP, f"{stage} {size}: formula far above"


def rows_bytes(rows: int) -> int:
    return rows * 2688 * 2  # encoder outputs, bf16 at the LLM width


@pytest.mark.parametrize("n", [4, 16])
def test_vit_per_token(model, costs, n):
    g = torch.Generator("cuda").manual_seed(n)
    images = [
        ImageItem(torch.randn(3, 512, 512, device="cuda", generator=g), (32, 32)) for _ in range(n)
    ]
    tokens = n * (1024 + 10)
    formula = costs.vit(tokens) + rows_bytes(n * 256)
    fn = lambda: encode_visual(model.vit, model.mlp1, images, tokens)  # noqa: E731
    check("vit", f"{n} images 32x32", fn, formula)


@pytest.mark.parametrize(("frame", "k"), [((720, 1280), 8), ((2160, 3840), 2)])
def test_resize_per_frame(frame, k):
    u8 = torch.randint(0, 256, (k, 1, 3, *frame), dtype=torch.uint8, device="cuda")
    grid = (24, 42)
    check("resize", f"{k} frames {frame[1]}x{frame[0]}", lambda: video_pixels(u8, grid),
          k * resize_frame_bytes(frame, grid))  # fmt: skip


def test_video_encode_stays_in_its_room(model, costs):
    """A 64-tubelet 720p video with its soundtrack through `encode_items` in the pieces the
    engine gives a room of 16 tubelets' ViT work: the peak is the room plus the outputs."""
    frames = torch.randint(0, 256, (64, 2, 3, 720, 1280), dtype=torch.uint8, device="cuda")
    clips = [torch.randn(3000, 128, device="cuda") for _ in range(4)]
    audio = AudioItem(clips, 4 * 480000, [480000] * 4)
    video = VideoItem(frames, (24, 42), [0.5 * i for i in range(128)], audio)
    room = costs.vit(16 * 1018)
    pieces = encode_pieces(costs, room)
    outputs = rows_bytes(64 * 252 + 4 * 375)
    fn = lambda: encode_items(model, [video], pieces)  # noqa: E731
    check("encode", "64 tubelets 720p + 2 min", fn, room + outputs, margin=1.0)


@pytest.mark.parametrize("k", [4, 16])
def test_audio_per_frame(model, costs, k):
    clips = [torch.randn(3000, 128, device="cuda") for _ in range(k)]
    item = AudioItem(clips, k * 480000, [480000] * k)
    fn = lambda: encode_audios(model.sound_encoder, model.sound_projection, [item], k * 3000)  # noqa: E731
    check("audio", f"{k} clips of 30 s", fn, k * 3000 * costs.audio_frame + rows_bytes(k * 375))


def _prefill_setup(model, tokens: int, seqs: int):
    c = model.config.llm
    # room for every sequence's prompt and a decode token or two each
    cache = HybridCache(c, seqs, tokens + 2 * seqs + 16, tokens + 16, "cuda", torch.bfloat16)
    runner = ModelRunner(model.llm, cache)
    g = torch.Generator("cuda").manual_seed(tokens + seqs)
    each = tokens // seqs
    chunks = []
    for _ in range(seqs):
        embeds = torch.randn(each, c.hidden_size, device="cuda", generator=g).bfloat16()
        req = Request("r", embeds, SamplingParams())
        req.slot = cache.alloc_slot()
        chunks.append(PrefillChunk(req, 0, each))
    return runner, chunks


@pytest.mark.parametrize(("tokens", "seqs"), [(4096, 1), (16384, 1), (16384, 16)])
def test_prefill_per_token_and_sequence(model, costs, tokens, seqs):
    runner, chunks = _prefill_setup(model, tokens, seqs)
    formula = costs.prefill(tokens, seqs) + seqs * 2688 * 2

    def fn():
        for ch in chunks:
            runner.cache.clear_state(ch.request.slot)
        return runner.prefill(chunks)

    check("prefill", f"{tokens} tokens in {seqs} seqs", fn, formula)


def test_moe_experts_workspace(model):
    moe = model.llm.layers[1].mixer
    x = torch.randn(16384, 2688, device="cuda", dtype=torch.bfloat16)
    w, ids = ops.moe_route(x, moe.gate.weight, moe.gate.e_score_correction_bias, 6, 2.5)
    up, down = moe.experts.up_proj.weight, moe.experts.down_proj.weight
    fn = lambda: ops.moe_experts(x, up, down, w, ids)  # noqa: E731
    check("moe", "16384 tokens", fn, moe_experts.workspace_bytes(16384, 6, 128, 1856, 2688, 2))


@pytest.mark.parametrize("n", [16, 64])
def test_decode_per_sequence(model, costs, n):
    """Eager decode of n sequences (what a CUDA graph's pool holds, captured the same way)."""
    runner, chunks = _prefill_setup(model, 64 * n, n)
    runner.prefill(chunks)
    reqs = [c.request for c in chunks]
    for r in reqs:
        r.num_computed, r.output_ids = 64, [5]
    check("decode", f"{n} sequences", lambda: runner.decode(reqs), costs.decode(n))


def test_decode_graph_pool(model, costs):
    """Capturing the decode graphs (warm-up included) peaks, and their pool then holds,
    under the plan's decode workspace for the largest batch."""
    from workers.engine.decode_graphs import DecodeGraphs

    n = 64
    cache = HybridCache(model.config.llm, n, n * 80, 80, "cuda", torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    measured, graphs = peak(lambda: DecodeGraphs(model.llm, cache, list(graph_sizes(n))))
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved() - before
    formula = graph_pool(costs, n)
    RESULTS.append(dict(stage="graphs", size=f"{n} seqs", measured=measured, held=held,
                        formula=formula))  # fmt: skip
    print(f"graphs: capture peak {measured / MiB:.1f} MiB, pool {held / MiB:.1f} MiB, "
          f"formula {formula / MiB:.1f} MiB")  # fmt: skip
    assert measured <= formula + SLOP and held <= formula + SLOP
    del graphs


@pytest.mark.parametrize("n", [32, 128])
def test_sample_per_row(model, costs, n):
    cache = HybridCache(model.config.llm, n, 64, 16, "cuda", torch.bfloat16)  # the masks' slots
    runner = ModelRunner(model.llm, cache)
    reqs = [Request(f"r{i}", None, SamplingParams(temperature=0.8, top_p=0.9), prompt_len=1)
            for i in range(n)]  # fmt: skip
    hidden = torch.randn(n, 2688, device="cuda", dtype=torch.bfloat16)
    check("sample", f"{n} rows top-p", lambda: runner.sample(reqs, hidden), costs.sample(n))


def test_weights_runtime_and_the_plan(model):
    """Run last (file order): by now every stage's kernels are loaded. What the process holds
    outside torch (the GPU runs nothing else) stays under runtime_bytes(card); what torch keeps
    beyond the weights once the stages ran (library workspaces, per-stream caches) under
    SLACK_BYTES; this card's plan fits its cap."""
    gc.collect()  # what earlier tests left in reference cycles
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    runtime = total - free - reserved
    rounding = LOADED["reserved"] - weight_bytes(model)
    kept = reserved - LOADED["reserved"]
    RESULTS.append(dict(stage="runtime", size="after all stages", measured=runtime,
                        at_load=LOADED["runtime"], card=total, formula=runtime_bytes(total),
                        weights_rounding=rounding, kept=kept))  # fmt: skip
    print(f"outside torch {runtime / MiB:.0f} MiB (at load {LOADED['runtime'] / MiB:.0f}, card "
          f"{total / GiB:.1f} GiB); weights' allocator rounding "
          f"{rounding / MiB:.0f} MiB; kept after the stages {kept / MiB:.0f} MiB")  # fmt: skip
    assert runtime <= runtime_bytes(total)
    assert kept <= SLACK_BYTES
    plan = plan_for(model, None)
    print(plan.table())
    assert plan.weights >= LOADED["reserved"]
    assert plan.total() <= plan.cap <= CARD_SHARE * total
