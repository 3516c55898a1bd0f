"""One memory plan per worker: every byte the process may hold on the GPU, under a hard cap.

Made at start from the cap (GPU_MEMORY_GB, or 95 % of the card) and the loaded weights'
real bytes (parameters and buffers, whatever their dtype: FP8 and NVFP4 weights count what
they hold; under a small cap the embedding table waits in host memory, see plan_for). What
stays the whole time:

    runtime    CUDA context, cuBLAS / cuDNN handles, Triton's loaded kernels (outside torch)
    weights    + slack for the allocator's rounding and split blocks
    cache      slots (conv + fp32 SSM state per Mamba layer), KV rows, the slots' row tables
    graphs     the CUDA-graph pool of decode (its largest batch)
    uploads    media the job threads copied to the GPU ahead of the engine (upload.py)
    prompts    encoded prompts waiting for prefill (their embeddings; dropped once prefilled)
    headroom   left unplanned: blocks of the stages' ever-changing sizes that the allocator
               holds cached but cannot reuse for the next size (see FRAGMENTATION_SHARE)

and one workspace, shared by the stages because the engine thread runs them one after the
other: encoders (a group's outputs + the pieces a forward takes), a prefill forward, the LM
head and sampling. The batch budgets come out of the workspace (workspace.py prices each
stage from the model's shapes); what is left after workspace, uploads and prompts goes to
the cache. A cap that cannot hold the weights plus the smallest useful plan is refused
with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from media.image import DEFAULT_BUDGET as MAX_IMAGE_PATCHES
from workers.engine.workspace import CLIP_FRAMES, StageCosts
from workers.model.audio import MAX_AUDIO_FRAMES
from workers.model.config import OmniConfig
from workers.model.omni import EncodePieces
from workers.model.vision import MAX_VIT_TOKENS, RESIZE_SLICE_BYTES, resize_frame_bytes

MiB, GiB = 1 << 20, 1 << 30
# The default cap's share of the card. The plan counts everything the process holds, the
# runtime outside torch included, so the margin is only for the driver and other processes;
# at 0.9 an 80 GB H100 with bf16 weights got 62-68 cache slots, where the code before the
# plan ran 79.
CARD_SHARE = 0.95


def runtime_bytes(card: int) -> int:
    """Bound on what the process holds outside torch's allocator on a card of `card` bytes
    (tests/gpu/test_memory_gpu.py measures it): the CUDA context with lazily loaded modules,
    library handles, Triton's kernels; the driver's share grows with the card's memory.
    Measured after every stage: 783 MiB on an H100 80 GB (sessions 7 and 8; 0.82-0.83 GiB
    after the long-input mix), 967 MiB on an H200 141 GB (session 18). A flat 1 GiB kept
    bf16 weights out of a 64 GiB cap by 0.03 GiB; a flat 896 MiB was 71 MiB short on the
    H200."""
    return 768 * MiB + card // 512


RUNTIME_BYTES = runtime_bytes(80 * 10**9)  # an 80 GB card's: plan_memory's unless told
SLACK_BYTES = 256 * MiB  # the weights' segment rounding and the workspace's split blocks
# What a roomy card gets; smaller caps scale down toward the minimums.
MAX_SLOTS = 512
KV_ROWS_PER_SLOT = 6144  # a W-video clip's prompt and output need ≈ 5.5 K
MAX_SEQ_LEN, MIN_SEQ_LEN = 131072, 32768  # a 2-minute clip at 2 fps fits the minimum
PREFILL_TOKENS, MIN_PREFILL_TOKENS = 16384, 512
# The share of the cache's bytes that the longest request's prompt staging and KV rows may
# take. Each slot holds ≈ 65 MiB (fp32 SSM state of 23 layers, its KV rows), so under a
# small cap the longest request and the slots compete: at 25 GiB with NVFP4 weights half
# gave 13 slots and 110 K tokens, a quarter gives 20 slots and 55 K (longer inputs run as
# several calls: the pipeline sizes video chunks to `Engine.longest_sequence`). Roomy caps
# reach MAX_SEQ_LEN either way.
LONG_SEQ_SHARE = 0.25
# Sequences a step's prefill budget is sized for; a step with more runs as several forwards.
PREFILL_SEQS = 8
PREFILL_AHEAD_STEPS = 16  # prefill steps' worth of encoded prompts waiting, at most
UPLOAD_BYTES = 4 * GiB
# Under a cap whose plan holds fewer slots than this, the embedding table (0.66 GiB at full
# size) waits in host memory: at 25 GiB with NVFP4 weights 20 -> 26 slots and a 5 120-token
# prefill instead of 3 840, at 64 GiB with bf16 weights 1 -> 10 slots; an 80 GB card's bf16
# plan (97 slots) keeps it on the GPU.
HOST_EMBEDDINGS_BELOW_SLOTS = 32
# What each captured decode graph keeps in the graph pool beyond one forward at the largest
# batch (its static buffers, the allocator's block rounding of its small intermediates):
# tests/gpu/test_memory_gpu.py measured a 92 MiB pool for 7 sizes up to 64 sequences, where
# the one-forward formula says 25 MiB.
GRAPH_BYTES = 12 * MiB
WORKSPACE_SHARE, UPLOAD_SHARE, PROMPT_SHARE = 0.2, 0.06, 0.15
# Headroom beside the parts that come and go (workspace, uploads, waiting prompts), as a share
# of them. A plan that fills the cap exactly leaves torch's caching allocator no room for a
# cached block that fits no new request: at the cap it frees its whole cache and allocates
# afresh, synchronising the device. W-video under a full plan held its reserve within 0.5 GiB
# of the cap and prefilled at 27.5 K tok/s; with this headroom and upload.py's fix together,
# 66 K and one retry in the run (RESULTS.md, session 7; which of the two did it is unmeasured).
FRAGMENTATION_SHARE = 0.25
# The smallest encoder pieces: one image at the largest patch budget, one 30 s clip, one
# 4K UHD frame resized (a larger frame needs a workspace that holds it).
MIN_RESIZE_BYTES = resize_frame_bytes((2160, 3840), (24, 42))


class MemoryPlanError(ValueError):
    """The cap cannot hold the weights plus the smallest plan."""


@dataclass(frozen=True)
class MemoryPlan:
    cap: int  # bytes the process may hold on the GPU
    runtime: int
    weights: int
    slack: int
    max_running: int  # cache slots
    kv_rows: int
    max_seq_len: int  # prompt + output of one request, at most
    decode_graph_sizes: tuple[int, ...]
    upload_bytes: int
    prompt_budget: int  # encoded prompt tokens waiting for prefill, at most
    workspace: int  # shared by the stages
    prefill_token_budget: int
    sample_rows: int  # rows per LM head + sampling call
    headroom: int  # left unplanned for the allocator (FRAGMENTATION_SHARE)
    costs: StageCosts
    host_embeddings: int = 0  # bytes of the embedding table kept in host memory (plan_for)

    @property
    def torch_cap(self) -> int:
        """What torch's allocator may reserve: the cap less what lives outside it."""
        return self.cap - self.runtime

    def parts(self) -> list[tuple[str, int, str]]:
        """(name, bytes, what) of everything the plan holds; they sum to `total`."""
        c = self.costs
        slots = self.max_running + 1  # + the scratch slot of padded graph rows
        return [
            ("runtime", self.runtime, "CUDA context, library handles, kernels"),
            ("weights", self.weights, "parameters and buffers as loaded" + self._host()),
            ("slack", self.slack, "allocator rounding and split blocks"),
            ("cache slots", slots * (c.slot + self.max_seq_len * c.seq_row_index),
             f"{self.max_running} slots: conv + SSM state, row table"),
            ("KV rows", (self.kv_rows + 1) * c.kv_row, f"{self.kv_rows} tokens"),
            ("decode graphs", graph_pool(c, self.max_running),
             f"batch sizes {self.decode_graph_sizes[0]}..{self.decode_graph_sizes[-1]}"),
            ("uploads", self.upload_bytes, "media copied ahead of the engine"),
            ("prompts", self.prompt_budget * c.prompt_row,
             f"{self.prompt_budget} tokens waiting for prefill"),
            ("workspace", self.workspace, self._stages()),
            ("headroom", self.headroom, "unplanned: the allocator's cached odd-sized blocks"),
        ]  # fmt: skip

    def total(self) -> int:
        return sum(b for _, b, _ in self.parts())

    def _host(self) -> str:
        if not self.host_embeddings:
            return ""
        return f"; the embedding table ({self.host_embeddings / GiB:.2f} GiB) in host memory"

    def _stages(self) -> str:
        p = encode_pieces(self.costs, self.workspace)
        clips = p.audio_frames // CLIP_FRAMES
        return (
            f"prefill {self.prefill_token_budget} tok, sample "
            f"{self.sample_rows} rows, ViT {p.vit_tokens} tok, audio {clips} clips, "
            f"resize {p.resize_bytes >> 20} MiB"
        )

    def table(self) -> str:
        """The plan as a small aligned table (logged at worker start)."""
        rows = [(n, f"{b / GiB:8.2f}", w) for n, b, w in self.parts()]
        rows.append(("total", f"{self.total() / GiB:8.2f}", f"of a {self.cap / GiB:.2f} GiB cap"))
        width = max(len(n) for n, _, _ in rows)
        lines = [f"{'GPU memory plan':{width}}      GiB"]
        lines += [f"{n:{width}} {b}  {w}" for n, b, w in rows]
        return "\n".join(lines)

    def summary(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "costs"}


def encode_pieces(costs: StageCosts, room: int) -> EncodePieces:
    """The largest encoder pieces whose forwards fit in `room` bytes (the minimum ones at
    least): a resize slice takes half, its output pixels and the piece's embeddings the rest."""
    vit = (room - costs.vit_fixed) // costs.vit_token
    return EncodePieces(
        vit_tokens=_clamp(vit, MAX_IMAGE_PATCHES + 16, MAX_VIT_TOKENS),
        audio_frames=_clamp(room // costs.audio_frame, CLIP_FRAMES, MAX_AUDIO_FRAMES),
        resize_bytes=_clamp(room // 2, MIN_RESIZE_BYTES, RESIZE_SLICE_BYTES),
    )


def min_piece_bytes(costs: StageCosts) -> int:
    """Workspace of the smallest encoder pieces (`encode_pieces` of no room)."""
    p = encode_pieces(costs, 0)
    return max(
        costs.vit(p.vit_tokens),
        p.audio_frames * costs.audio_frame,
        2 * p.resize_bytes,
    )


def encode_room(costs: StageCosts, workspace: int, prompt_budget: int) -> int:
    """GPU bytes one request's encoder outputs and prompt may take, admitted with nothing else
    waiting for prefill: the workspace and the prompt budget's bytes, less the work of the
    smallest encoder pieces (the engine fails a request that needs more)."""
    return workspace + prompt_budget * costs.prompt_row - min_piece_bytes(costs)


def weight_bytes(model: nn.Module, device: torch.device | None = None) -> int:
    """Bytes of the model's parameters and buffers as they are: an FP8 or packed NVFP4 tensor
    counts its own element size, fp32 router weights and norms theirs. Given a `device`, only
    the tensors there (the embedding table may wait in host memory)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    here = [t for t in tensors.values() if device is None or t.device == device]
    return sum(t.numel() * t.element_size() for t in here)


def plan_for(model, gpu_memory_gb: float | None) -> MemoryPlan:
    """The plan of an OmniModel loaded on its CUDA device; under a cap that leaves fewer than
    `HOST_EMBEDDINGS_BELOW_SLOTS` slots, the embedding table moves to pinned host memory first
    (each prompt and decode step then copies its rows: T x 5.25 KiB at full size)."""
    llm = model.llm
    if llm.embeddings.weight.is_cuda:
        try:
            plan = _plan_for(model, gpu_memory_gb)
            if plan.max_running >= HOST_EMBEDDINGS_BELOW_SLOTS:
                return plan
        except MemoryPlanError:
            pass  # the table's room may be what the cap lacks
        llm.keep_embeddings_on_host()
    return replace(_plan_for(model, gpu_memory_gb), host_embeddings=llm.embeddings.weight.nbytes)


def _plan_for(model, gpu_memory_gb: float | None) -> MemoryPlan:
    """The cap is GPU_MEMORY_GB (GiB) or `CARD_SHARE` of the card, and never more than the
    card has beside other processes; the weights count their tensor bytes, or the allocator's
    reserve after loading when that is larger (its rounding)."""
    dev = model.device
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(dev)
    reserved = torch.cuda.memory_reserved(dev)
    cap = int(gpu_memory_gb * GiB) if gpu_memory_gb else int(CARD_SHARE * total)
    runtime = runtime_bytes(total)
    cap = min(cap, free + reserved + runtime)
    weights = max(weight_bytes(model, dev), reserved)
    itemsize = model.llm.embeddings.weight.element_size()
    return plan_memory(
        model.config, weights, cap, itemsize, runtime, kv_itemsize=model.llm.kv_dtype.itemsize
    )


def plan_memory(
    config: OmniConfig,
    weight_bytes: int,
    cap: int,
    itemsize: int,
    runtime: int = RUNTIME_BYTES,
    slack: int = SLACK_BYTES,
    kv_itemsize: int | None = None,
) -> MemoryPlan:
    """The plan for a model of `config` whose loaded weights hold `weight_bytes`, under `cap`
    bytes; activations and cache in a dtype of `itemsize` bytes, the KV pools in
    `kv_itemsize` (FP8 KV: 1). Raises MemoryPlanError when even the smallest plan does not fit."""
    c = StageCosts.of(config, itemsize, kv_itemsize)
    free = cap - runtime - weight_bytes - slack
    w_min = max(c.prefill(MIN_PREFILL_TOKENS, 1), c.sample(1), min_piece_bytes(c))
    min_cache = _cache(c, 1, MIN_SEQ_LEN, MIN_SEQ_LEN)
    smallest = _with_headroom(w_min + MIN_SEQ_LEN * c.prompt_row) + min_cache
    if free < smallest:
        raise MemoryPlanError(
            f"GPU_MEMORY_GB={cap / GiB:.1f} GiB cannot run this model: weights "
            f"{weight_bytes / GiB:.2f} GiB + runtime {runtime / GiB:.2f} + slack {slack / GiB:.2f}"
            f" + the smallest workspace {w_min / GiB:.2f}, prompt staging "
            f"{MIN_SEQ_LEN * c.prompt_row / GiB:.2f} (with the allocator's headroom beside "
            f"them: x {1 + FRAGMENTATION_SHARE}) and cache {min_cache / GiB:.2f} (one "
            f"{MIN_SEQ_LEN}-token sequence) = {(cap - free + smallest) / GiB:.2f} GiB; raise "
            "GPU_MEMORY_GB or load quantized (FP8 / NVFP4) weights"
        )
    target = c.prefill(PREFILL_TOKENS, PREFILL_SEQS)
    workspace = _clamp(int(WORKSPACE_SHARE * free), w_min, max(target, w_min))
    # uploads take at most what the workspace, the smallest prompts and cache leave
    spare = free - _with_headroom(workspace + MIN_SEQ_LEN * c.prompt_row) - min_cache
    upload_max = min(UPLOAD_BYTES, int(spare / (1 + FRAGMENTATION_SHARE)))
    upload = _clamp(int(UPLOAD_SHARE * free), 0, upload_max)
    rest = free - _with_headroom(workspace + upload)
    seq_len = _clamp(LONG_SEQ_SHARE * rest // (c.prompt_row + c.kv_row), MIN_SEQ_LEN, MAX_SEQ_LEN)
    tokens = (workspace - c.prefill(0, PREFILL_SEQS)) // c.prefill_token // 256 * 256
    tokens = _clamp(tokens, MIN_PREFILL_TOKENS, PREFILL_TOKENS)
    ahead = min(PREFILL_AHEAD_STEPS * tokens, int(PROMPT_SHARE * rest) // c.prompt_row)
    prompts = max(seq_len, ahead)
    cache = rest - _with_headroom(prompts * c.prompt_row)
    per_slot = c.slot + seq_len * c.seq_row_index + KV_ROWS_PER_SLOT * c.kv_row + c.decode_seq
    slots = _clamp((cache - _cache(c, 0, 0, seq_len)) // per_slot, 1, MAX_SLOTS)
    # fewer slots where their state would leave one request less than its max_seq_len rows
    while slots > 1 and _cache(c, slots, seq_len, seq_len) > cache:
        slots -= 1
    kv_rows = (cache - _cache(c, slots, 0, seq_len)) // c.kv_row  # the scratch row counted there
    return MemoryPlan(
        cap=cap,
        runtime=runtime,
        weights=weight_bytes,
        slack=slack,
        max_running=slots,
        kv_rows=kv_rows,
        max_seq_len=min(seq_len, kv_rows),
        decode_graph_sizes=graph_sizes(slots),
        upload_bytes=upload,
        prompt_budget=prompts,
        workspace=workspace,
        prefill_token_budget=tokens,
        sample_rows=min(c.sample_rows(workspace), slots),
        # what the parts that come and go leave of `free` beside the cache
        headroom=free - cache - workspace - upload - prompts * c.prompt_row,
        costs=c,
    )


def _cache(c: StageCosts, slots: int, kv_rows: int, seq_len: int) -> int:
    """Slots (+ the scratch one) with their row tables, KV rows (+ the scratch one) and the
    decode graph pool for `slots` sequences."""
    table = (slots + 1) * (c.slot + seq_len * c.seq_row_index)
    return table + (kv_rows + 1) * c.kv_row + graph_pool(c, slots)


def graph_sizes(slots: int) -> tuple[int, ...]:
    """The decode batch sizes captured as CUDA graphs: powers of two below `slots`, and it."""
    return tuple(n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n < slots) + (slots,)


def graph_pool(c: StageCosts, slots: int) -> int:
    """The CUDA-graph pool of decode: one forward at the largest batch, and each graph's own."""
    return c.decode(slots) + len(graph_sizes(slots)) * GRAPH_BYTES


def _with_headroom(nbytes: int) -> int:
    """Bytes of parts that come and go, with the allocator's headroom beside them."""
    return nbytes + int(FRAGMENTATION_SHARE * nbytes)


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(int(x), hi))
