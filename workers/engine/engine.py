"""The batch engine: one thread owns the GPU and serves every job of the worker.

Jobs (worker threads) hand in *prepared* requests — a rendered prompt plus model-ready media
items — and get a future. Each loop iteration the engine
  1. encodes the visual and audio items of queued requests together, so the ViT sees
     tubelets and images of many jobs in one call, in groups that fit its memory: the
     encoded prompts waiting for prefill (their embeddings sit on the GPU until prefilled)
     stay within `prompt_budget` tokens, and a group's encoder outputs and prompts, with the
     encoders' pieces, within the workspace beside them (memory_plan.py),
  2. splices the embeddings into each prompt (EVS drops redundant video rows) and admits
     the requests to the scheduler,
  3. runs one scheduler step: decode for every running sequence (a small decode batch may
     wait a few steps while prompts are prefilled, see scheduler.py), prompt chunks up to
     the token budget, then the LM head and sampling.
Each stage runs through `Engine.stages`; an out-of-memory in one is recovered by freeing,
splitting and retrying (recovery.py), and only a request that cannot run alone fails.
Cancel takes effect between steps and frees the request's cache slot at once.

Failures: a request whose own setup fails (encoding, splicing, its sampler) fails alone; a
step that raises fails the requests in it. Anything else that escapes the loop is a bug in
the engine: the thread then dies *loudly* (`alive` turns False, every request held and every
later submit fails with EngineDead), so the worker can hand its jobs back and exit rather
than wedge with a dead engine.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from media.items import AudioItem, ImageItem, VideoItem
from workers.engine.grammar import RequestGrammar
from workers.engine.memory_plan import (
    PREFILL_AHEAD_STEPS,
    MemoryPlan,
    encode_pieces,
    encode_room,
    plan_for,
)
from workers.engine.recovery import (
    OutOfMemory,
    RecoveringStep,
    ResourcesExhausted,
    Stages,
    release_memory,
    smaller_pieces,
)
from workers.engine.request import Request, RequestState, SamplingParams
from workers.engine.runner import ModelRunner
from workers.engine.sampler import make_generator
from workers.engine.scheduler import Scheduler, SchedulerConfig
from workers.engine.stats import StageStats
from workers.engine.upload import MediaUploader
from workers.engine.workspace import StageCosts
from workers.model.cache import HybridCache
from workers.model.linear import warm_sizes
from workers.model.omni import (
    EncodePieces,
    OmniModel,
    PromptStats,
    PromptTokens,
    encode_items,
    expected_stats,
    prompt_tokens,
    splice_prompt_embeds,
)

log = logging.getLogger("omnibatch.engine")


class EngineDead(RuntimeError):
    """The engine thread has died: nothing submitted to this engine will ever finish."""


@dataclass(frozen=True)
class EngineConfig:
    # Cache slots: sequences decoded together. A decode step streams the touched experts'
    # weights whatever the batch, so more sequences a step is nearly free throughput until
    # the per-sequence Mamba state (≈ 49 MB read and written a step) catches up.
    max_running: int = 512
    kv_capacity_tokens: int = 1 << 20  # KV pool rows (6 KB each at full size, bf16; 3 KB FP8)
    max_seq_len: int = 131072
    prefill_token_budget: int = 16384
    decode_graph_sizes: tuple[int, ...] = ()  # CUDA-graph decode batch sizes; () = eager
    # Encoded prompt tokens waiting for prefill, at most: their embeddings stay on the GPU
    # until prefilled (thousands of queued pages, encoded at once, would not fit).
    prompt_budget: int = PREFILL_AHEAD_STEPS * 16384
    # GPU bytes for the stages' work beside the cache, weights and waiting prompts, used by
    # one stage at a time: an encode group's outputs and forwards, a prefill forward, the LM
    # head and sampling (workspace.py prices each).
    workspace_bytes: int = 4 << 30
    # Media that job threads copy to the GPU ahead of the engine (upload.py), at most; the
    # engine lets go of each request's media once encoded.
    max_upload_bytes: int = 4 << 30
    profile: bool = False  # time each stage in `Engine.stats` (synchronises the GPU: benchmarks)
    plan: MemoryPlan | None = field(default=None, compare=False)  # what the budgets came from

    @classmethod
    def from_plan(cls, plan: MemoryPlan, **kw) -> EngineConfig:
        return cls(
            max_running=plan.max_running,
            kv_capacity_tokens=plan.kv_rows,
            max_seq_len=plan.max_seq_len,
            prefill_token_budget=plan.prefill_token_budget,
            decode_graph_sizes=plan.decode_graph_sizes,
            prompt_budget=plan.prompt_budget,
            workspace_bytes=plan.workspace,
            max_upload_bytes=plan.upload_bytes,
            plan=plan,
            **kw,
        )


def engine_config(model: OmniModel, gpu_memory_gb: float | None) -> EngineConfig:
    """The worker's engine: its memory plan under GPU_MEMORY_GB (or 95 % of the card) on CUDA,
    with CUDA graphs for decode; a small eager engine on the CPU (demo checkpoint, tests)."""
    if model.device.type != "cuda":
        return EngineConfig(max_running=16, kv_capacity_tokens=1 << 16, max_seq_len=1 << 16)
    return EngineConfig.from_plan(plan_for(model, gpu_memory_gb))


@dataclass(eq=False)
class Prepared:
    """One job's model input before encoding: a rendered prompt with one marker per item.

    The engine drops `items` (and `tokens`) once it has encoded them: a request keeps only
    its prompt embeddings, so a clip's frames are not held for the whole generation.
    """

    prompt: str
    items: list[ImageItem | VideoItem | AudioItem]
    params: SamplingParams
    evs_rate: float
    rid: str = ""
    future: Future = field(default_factory=Future)  # -> (Request, PromptStats)
    tokens: PromptTokens | None = None  # set by Engine.submit, on the caller's thread
    expected: PromptStats | None = None  # likewise: the prompt's size, known before encoding
    uploaded: int = 0  # bytes of `items` the submitting thread copied to the GPU
    # Called once the engine holds none of `items` on the host any more: copied to the GPU
    # on submit, or encoded, failed or cancelled (the worker's shared-memory budget).
    on_host_release: Callable[[], None] | None = None
    grammar: RequestGrammar | None = None  # structured output, compiled on the job's thread


class Engine:
    def __init__(self, model: OmniModel, tokenizer, config: EngineConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        dtype = model.llm.embeddings.weight.dtype
        plan = config.plan
        self.costs = plan.costs if plan else StageCosts.of(
            model.config, dtype.itemsize, model.llm.kv_dtype.itemsize
        )
        if plan is not None and model.device.type == "cuda":
            # The cap is hard: past it torch's allocator frees its cache, then raises.
            total = torch.cuda.get_device_properties(model.device).total_memory
            fraction = min(1.0, plan.torch_cap / total)
            torch.cuda.set_per_process_memory_fraction(fraction, model.device)
            _grow_segments_in_place()
        self.cache = HybridCache(
            model.config.llm,
            config.max_running,
            config.kv_capacity_tokens,
            config.max_seq_len,
            model.device,
            dtype,
            kv_dtype=model.llm.kv_dtype,
        )
        graphs = None
        if config.decode_graph_sizes:
            from workers.engine.decode_graphs import DecodeGraphs

            graphs = DecodeGraphs(model.llm, self.cache, list(config.decode_graph_sizes))
        self.stats = StageStats(config.profile)
        self.uploader = (
            MediaUploader(model.device, config.max_upload_bytes, self.stats)
            if model.device.type == "cuda"
            else None
        )
        self.runner = ModelRunner(
            model.llm, self.cache, graphs, self.stats, self.costs, config.workspace_bytes
        )
        # the token-count tilings compile here, not on the engine thread inside the first jobs
        longest_prefill = min(config.prefill_token_budget, self.longest_sequence)
        self.runner.warm_up(warm_sizes(model.llm, longest_prefill))
        self.stages = Stages(
            self._encode_stage, self.runner.prefill, self.runner.decode, self.runner.sample
        )
        # LM head + sampling rows at once: their fp32 logits and the sampler's copies
        rows = min(config.max_running, self.costs.sample_rows(config.workspace_bytes))
        self.steps = RecoveringStep(
            self.stages, self.runner, rows, config.prefill_token_budget, self._fail, self.stats
        )
        # Half the slots: a decode batch that large already touches nearly every expert.
        scheduler_config = SchedulerConfig(
            config.prefill_token_budget, decode_min_batch=max(1, config.max_running // 2)
        )
        self.scheduler = Scheduler(scheduler_config, self.cache)
        self._inbox: queue.Queue[Prepared | str] = queue.Queue()  # Prepared, or a rid to cancel
        self._queued: deque[Prepared] = deque()  # taken from the inbox, not yet encoded
        self._pending: dict[str, tuple[Prepared, PromptStats]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._death: BaseException | None = None  # why the engine thread died
        self._death_lock = threading.Lock()  # a submit racing the death still gets failed

    # ---- called from job threads -------------------------------------------------------
    def submit(self, prepared: Prepared) -> Future:
        """Queue a request; the future resolves to (finished Request, PromptStats).

        The prompt is tokenized, and the media copied to the GPU, here on the caller's thread
        (without the GIL: omni.py, upload.py), while the engine thread keeps the GPU fed.
        """
        prepared.rid = prepared.rid or f"req{next(self._ids)}"
        try:
            if self.uploader is not None:
                prepared.items, prepared.uploaded = self.uploader.upload(prepared.items)
                if prepared.uploaded:
                    self._host_released(prepared)
            prepared.tokens = prompt_tokens(self.tokenizer, prepared.prompt, prepared.items)
            prepared.expected = expected_stats(prepared.tokens, prepared.evs_rate)
        except Exception as exc:  # a malformed prompt (or a failed copy) fails its request only
            self._let_go(prepared)
            prepared.future.set_exception(exc)
            return prepared.future
        with self._death_lock:
            if self._death is None:
                self._inbox.put(prepared)
                return prepared.future
        self._let_go(prepared)
        prepared.future.set_exception(EngineDead("the engine thread has died"))
        return prepared.future

    @property
    def longest_sequence(self) -> int:
        """Prompt + output tokens one request may hold (its KV rows, its slot's row table)."""
        return min(self.cache.kv_capacity_tokens, self.cache.max_seq_len)

    @property
    def encode_room(self) -> int:
        """What `_admit` lets one request's encoder outputs and prompt take (memory_plan)."""
        return encode_room(self.costs, self.config.workspace_bytes, self.config.prompt_budget)

    @property
    def alive(self) -> bool:
        return self._death is None and self._thread is not None and self._thread.is_alive()

    def cancel(self, rid: str) -> None:
        self._inbox.put(rid)

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._inbox.put("")
        if self._thread is not None:
            self._thread.join()

    # ---- the engine thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain(block=not self.scheduler.has_work() and not self._queued)
                self._admit()
                if not self.scheduler.has_work():
                    continue
                try:
                    self.step()
                except Exception as exc:  # the engine thread must outlive a failed step
                    self._fail_all(exc)
        except BaseException as exc:
            log.critical("the engine thread died", exc_info=exc)
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        """The loop itself failed: fail every request this engine holds, and every later one."""
        with self._death_lock:
            self._death = exc
        dead = EngineDead(f"the engine thread died: {type(exc).__name__}: {exc}")
        held = [p for p, _ in self._pending.values()] + list(self._queued)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Prepared):
                held.append(item)
        for p in held:
            if not p.future.done():
                p.future.set_exception(dead)

    def _fail_all(self, exc: Exception) -> None:
        """A step raised: its requests' state is unknown, so every waiting and running one fails
        with it."""
        for req in [*self.scheduler.waiting, *self.scheduler.running]:
            self._fail(req, exc)

    def _drain(self, block: bool) -> None:
        """Move the inbox into the queue, applying cancels."""
        try:
            waiting = time.perf_counter()
            item = self._inbox.get(block=block)
            if block:
                self.stats.idle_seconds += time.perf_counter() - waiting
            while True:
                if isinstance(item, Prepared):
                    self._queued.append(item)
                elif item:
                    self._cancel(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _cancel(self, rid: str) -> None:
        for p in self._queued:
            if p.rid == rid:
                self._queued.remove(p)
                self._let_go(p)
                p.future.cancel()
                # Only this tells `concurrent.futures.wait` that the future is done.
                p.future.set_running_or_notify_cancel()
                return
        req = self.scheduler.cancel(rid)
        if req is not None:
            self._resolve(req)

    # ---- admission: encode, splice, hand to the scheduler ---------------------------------
    def _admit(self) -> None:
        """Encode queued requests' media together, in groups that fit (the module docstring),
        and hand them to the scheduler. The queue's head is never overtaken: when it does not
        fit, admission waits for prefill to take the waiting prompts; a head that cannot fit
        even with nothing else staged fails (`ResourcesExhausted`), one that can never fit in
        the cache is rejected, both before any encoding."""
        c, budget, room = self.costs, self.config.prompt_budget, self.encode_room
        limit = self.longest_sequence
        held = self._held_tokens()
        group, tokens, staged = [], 0, 0  # the group's prompt tokens and its bytes at splice
        while self._queued:
            p = self._queued[0]
            s = p.expected
            if s.prompt_tokens + p.params.max_tokens > limit:
                self._reject(self._queued.popleft())
                continue
            need = s.encoder_rows * c.encoded_row + s.prompt_tokens * c.prompt_row
            fits = held + tokens + s.prompt_tokens <= budget
            if fits and held * c.prompt_row + staged + need <= room:
                group.append(self._queued.popleft())
                tokens, staged = tokens + s.prompt_tokens, staged + need
            elif group:
                self._admit_group(group)
                group, tokens, staged, held = [], 0, 0, self._held_tokens()
            elif held:
                break
            else:
                self._fail_prepared(self._queued.popleft(), ResourcesExhausted("encoding"))
        if group:
            self._admit_group(group)
        self.stats.peak_unprefilled = max(self.stats.peak_unprefilled, self._held_tokens())

    def _held_tokens(self) -> int:
        """Prompt tokens whose embeddings are on the GPU: requests not yet fully prefilled."""
        reqs = (*self.scheduler.waiting, *self.scheduler.running)
        return sum(r.prompt_len for r in reqs if r.prompt_embeds is not None)

    @torch.no_grad()
    def _admit_group(self, group: list[Prepared]) -> None:
        """Encode `group` in the largest pieces that fit beside its outputs and the waiting
        prompts, then admit its requests."""
        c = self.costs
        outputs = sum(p.expected.encoder_rows for p in group) * c.encoded_row
        waiting = self.config.prompt_budget - self._held_tokens()
        room = self.config.workspace_bytes + waiting * c.prompt_row - outputs
        self._encode(group, encode_pieces(c, room))

    def _encode(self, group: list[Prepared], pieces: EncodePieces) -> None:
        """Encode and admit `group`; after an out-of-memory, its halves one by one, then a
        lone request in smaller pieces, down to the smallest."""
        self.stats.encode_groups += 1
        try:
            with self.stats.stage("encode", self.model.device):
                results = self.stages.encode(group, pieces)
        except OutOfMemory:
            results = None
        except Exception as exc:  # one bad batch fails its jobs, not the engine
            results = [exc] * len(group)
        if results is None:
            release_memory(self.model.device, self.stats, "encode")
            if len(group) > 1:
                self._encode(group[: len(group) // 2], pieces)
                self._encode(group[len(group) // 2 :], pieces)
            elif (smaller := smaller_pieces(pieces)) is not None:
                self._encode(group, smaller)
            else:
                self._fail_prepared(group[0], ResourcesExhausted("encoding"))
            return
        self.stats.count_media([i for p in group for i in p.items])
        for p, result in zip(group, results, strict=True):
            self._let_go(p)
            if isinstance(result, Exception):
                p.future.set_exception(result)
                continue
            embeds, stats = result
            try:
                generator = make_generator(p.params, self.model.device)
            except Exception as exc:  # this request's setup (a seed out of range too)
                p.future.set_exception(exc)
                continue
            req = Request(p.rid, embeds, p.params, generator=generator, grammar=p.grammar)
            self._pending[p.rid] = (p, stats)
            self.scheduler.add(req)
            if req.finished:  # rejected: can never fit in the cache
                self._resolve(req)

    def _encode_stage(
        self, group: list[Prepared], pieces: EncodePieces
    ) -> list[tuple[torch.Tensor, PromptStats] | Exception]:
        """The group's media through the encoders in `pieces`, each prompt spliced -> per
        request (embeds, stats), or the error its splice raised (that request's alone)."""
        encoded = encode_items(self.model, [i for p in group for i in p.items], pieces)
        out = []
        for p in group:
            try:
                embeds, _, stats = splice_prompt_embeds(self.model, p.tokens, encoded, p.evs_rate)
                out.append((embeds, stats))
            except OutOfMemory:
                raise
            except Exception as exc:
                out.append(exc)
            for item in [*p.tokens.visual, *p.tokens.audio]:  # in the prompt now
                encoded.pop(id(item), None)
        return out

    def _reject(self, p: Prepared) -> None:
        """A request whose prompt and output can never fit in the cache, known unencoded."""
        req = Request(p.rid, None, p.params, prompt_len=p.expected.prompt_tokens)
        req.state, req.finish_reason = RequestState.FINISHED, "rejected"
        self._let_go(p)
        p.future.set_result((req, p.expected))

    def _fail_prepared(self, p: Prepared, exc: Exception) -> None:
        self._let_go(p)
        p.future.set_exception(exc)

    def _let_go(self, p: Prepared) -> None:
        """Drop a request's media: encoded, failed or cancelled."""
        if self.uploader is not None and p.uploaded:
            self.uploader.release(p.uploaded)
        p.items, p.tokens, p.uploaded = [], None, 0
        self._host_released(p)

    @staticmethod
    def _host_released(p: Prepared) -> None:
        callback, p.on_host_release = p.on_host_release, None
        if callback is not None:
            callback()

    # ---- one step: decode, prefill, sample ------------------------------------------------
    def step(self) -> list[Request]:
        plan = self.scheduler.schedule()
        if plan.empty:
            return []
        self.stats.peak_batch = max(self.stats.peak_batch, len(plan.decode) + len(plan.prefill))
        self.stats.lone_decode_steps += bool(plan.decode and not plan.prefill and not self._queued)
        finished = self.scheduler.update(plan, self.steps.run(plan))
        for chunk in plan.prefill:
            if chunk.is_last:  # prefilled: the cache holds the prompt now
                chunk.request.prompt_embeds = None
        for req in finished:
            self._resolve(req)
        return finished

    def _fail(self, req: Request, exc: Exception) -> None:
        """A scheduled request fails alone: its slot is freed, its job gets `exc`."""
        self.scheduler.cancel(req.rid)
        req.prompt_embeds = None
        prepared, _ = self._pending.pop(req.rid)
        prepared.future.set_exception(exc)

    def _resolve(self, req: Request) -> None:
        req.prompt_embeds = None
        prepared, stats = self._pending.pop(req.rid)
        prepared.future.set_result((req, stats))


def _grow_segments_in_place() -> None:
    """Expandable segments for the allocations from here on (the weights are already placed).

    Under a hard cap, a reserve of fixed-size segments fragments: the stages' ever-changing
    sizes leave cached blocks that fit no new request, and at the cap each such miss frees the
    whole cache and synchronises the device (docs/memory.md, W-video at 0.912 × in session 8).
    A segment that grows by mapping pages keeps one address range per stream instead. Set at
    run time because CUDA is up by now, so the environment variable would be read too late;
    an operator's own PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF wins.
    """
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"):
        return
    torch._C._accelerator_setAllocatorSettings("expandable_segments:True")
