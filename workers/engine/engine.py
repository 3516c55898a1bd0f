"""The batch engine: one thread owns the GPU and serves every job of the worker.

Jobs (worker threads) hand in *prepared* requests — a rendered prompt plus model-ready media
items — and get a future. Each loop iteration the engine
  1. encodes the visual and audio items of queued requests together, so the ViT sees
     tubelets and images of many jobs in one call (equal grids batch; at most
     `encode_patch_budget` patches per call), while the encoded prompts waiting for prefill
     stay under `PREFILL_AHEAD_STEPS` steps' worth of tokens (their embeddings sit on the
     GPU: thousands of queued pages, encoded at once, would not fit),
  2. splices the embeddings into each prompt (EVS drops redundant video rows) and admits
     the requests to the scheduler,
  3. runs one scheduler step: decode for every running sequence (a small decode batch may
     wait a few steps while prompts are prefilled, see scheduler.py), prompt chunks up to
     the token budget.
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
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import torch

from workers.engine.cache import HybridCache
from workers.engine.request import Request, SamplingParams
from workers.engine.runner import ModelRunner
from workers.engine.sampler import make_generator
from workers.engine.scheduler import Scheduler, SchedulerConfig
from workers.engine.stats import StageStats, vision_patches
from workers.engine.upload import MediaUploader
from workers.media.items import AudioItem, ImageItem, VideoItem
from workers.model.omni import (
    OmniModel,
    PromptStats,
    PromptTokens,
    encode_items,
    prompt_tokens,
    splice_prompt_embeds,
)

log = logging.getLogger("omnibatch.engine")
_MiB = 1 << 20
PREFILL_AHEAD_STEPS = 16  # encoded prompt tokens waiting for prefill, in prefill steps: 256 K


class EngineDead(RuntimeError):
    """The engine thread has died: nothing submitted to this engine will ever finish."""


@dataclass(frozen=True)
class EngineConfig:
    # Cache slots: sequences decoded together. A decode step streams the touched experts'
    # weights whatever the batch, so more sequences a step is nearly free throughput until
    # the per-sequence Mamba state (≈ 49 MB read and written a step) catches up.
    max_running: int = 512
    kv_capacity_tokens: int = 1 << 20  # KV pool rows (6 KB each at full size, bf16)
    max_seq_len: int = 131072
    prefill_token_budget: int = 16384
    decode_graph_sizes: tuple[int, ...] = ()  # CUDA-graph decode batch sizes; () = eager
    # ViT patch positions per `encode_items` call: bounds the pixels, patch embeddings and
    # features one call holds on the GPU when many requests arrive at once (20 pages of 16
    # documents are 4 M patches, ≈ 30 GB); vision.py caps each forward's activations itself
    encode_patch_budget: int = 1 << 18
    # Media that job threads copy to the GPU ahead of the engine (upload.py), at most; the
    # engine lets go of each request's media once encoded.
    max_upload_bytes: int = 4 << 30
    profile: bool = False  # time each stage in `Engine.stats` (synchronises the GPU: benchmarks)

    @classmethod
    def for_memory(cls, model: OmniModel, gpu_memory_gb: float, **kw) -> EngineConfig:
        """Slots and KV rows that fit in `gpu_memory_gb` next to the weights.

        A quarter of what is left goes to activations and encoder work, media copied ahead
        of the engine included (a sixteenth at most); the rest is split between per-slot state
        (conv + fp32 SSM) and KV rows, sized for the default slots.
        """
        c = model.config.llm
        itemsize = model.llm.embeddings.weight.element_size()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        free = gpu_memory_gb * 1024 * _MiB - weights
        if free <= 0:
            raise ValueError(f"GPU_MEMORY_GB={gpu_memory_gb} is less than the weights need")
        n_mamba, n_attn = len(c.mamba_layers), len(c.attention_layers)
        slot_bytes = n_mamba * (
            c.conv_dim * (c.conv_kernel - 1) * itemsize
            + c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * 4
        )
        row_bytes = n_attn * 2 * c.num_key_value_heads * c.head_dim * itemsize
        usable = free * 3 / 4
        slots = max(1, min(kw.pop("max_running", cls.max_running), int(usable / 2 / slot_bytes)))
        rows = int((usable - slots * slot_bytes) / row_bytes)
        kw.setdefault("max_upload_bytes", int(min(cls.max_upload_bytes, free / 16)))
        return cls(max_running=slots, kv_capacity_tokens=rows, **kw)


def engine_config(model: OmniModel, gpu_memory_gb: float | None) -> EngineConfig:
    """The worker's engine: sized to GPU_MEMORY_GB (or 90 % of the card) on CUDA, with CUDA
    graphs for decode; a small eager engine on the CPU (demo checkpoint, tests)."""
    if model.device.type != "cuda":
        return EngineConfig(max_running=16, kv_capacity_tokens=1 << 16, max_seq_len=1 << 16)
    if gpu_memory_gb is None:
        gpu_memory_gb = 0.9 * torch.cuda.get_device_properties(model.device).total_memory / 2**30
    config = EngineConfig.for_memory(model, gpu_memory_gb)
    slots = config.max_running  # what fits: not always a power of two
    sizes = tuple(n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n < slots) + (slots,)
    return replace(config, decode_graph_sizes=sizes)


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
    uploaded: int = 0  # bytes of `items` the submitting thread copied to the GPU
    # Called once the engine holds none of `items` on the host any more: copied to the GPU
    # on submit, or encoded, failed or cancelled (the worker's shared-memory budget).
    on_host_release: Callable[[], None] | None = None


class Engine:
    def __init__(self, model: OmniModel, tokenizer, config: EngineConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        dtype = model.llm.embeddings.weight.dtype
        self.cache = HybridCache(
            model.config.llm,
            config.max_running,
            config.kv_capacity_tokens,
            config.max_seq_len,
            model.device,
            dtype,
        )
        graphs = None
        if config.decode_graph_sizes:
            from workers.engine.decode_graphs import DecodeGraphs

            graphs = DecodeGraphs(model.llm, self.cache, list(config.decode_graph_sizes))
        self.uploader = (
            MediaUploader(model.device, config.max_upload_bytes)
            if model.device.type == "cuda"
            else None
        )
        self.stats = StageStats(config.profile)
        self.runner = ModelRunner(model.llm, self.cache, graphs, self.stats)
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
            self.scheduler.cancel(req.rid)
            prepared, _ = self._pending.pop(req.rid)
            prepared.future.set_exception(exc)

    def _drain(self, block: bool) -> None:
        """Move the inbox into the queue, applying cancels."""
        try:
            item = self._inbox.get(block=block)
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

    def _admit(self) -> None:
        """Encode queued requests' media together, in groups of at most `encode_patch_budget`
        patches, splice, hand them to the scheduler; stop once the prompt tokens waiting for
        prefill reach `PREFILL_AHEAD_STEPS` steps (the queue's head is never overtaken)."""
        ahead = PREFILL_AHEAD_STEPS * self.config.prefill_token_budget
        waiting = self.scheduler.unprefilled_tokens()
        group, patches = [], 0
        while self._queued and waiting < ahead:
            p = self._queued[0]
            n = vision_patches(p.items)
            if group and patches + n > self.config.encode_patch_budget:
                self._admit_group(group)
                group, patches = [], 0
                waiting = self.scheduler.unprefilled_tokens()
                continue
            group.append(self._queued.popleft())
            patches += n
            waiting += len(p.tokens.ids)  # before EVS: an upper bound
        if group:
            self._admit_group(group)
        self.stats.peak_unprefilled = max(
            self.stats.peak_unprefilled, self.scheduler.unprefilled_tokens()
        )

    @torch.no_grad()
    def _admit_group(self, new: list[Prepared]) -> None:
        items = [i for p in new for i in p.items]
        try:
            with self.stats.stage("encode", self.model.device):
                encoded = encode_items(self.model, items)
        except Exception as exc:  # one bad batch fails its jobs, not the engine
            for p in new:
                self._let_go(p)
                p.future.set_exception(exc)
            return
        self.stats.count_media(items)
        del items
        for p in new:
            tokens = p.tokens
            self._let_go(p)
            try:
                with self.stats.stage("encode", self.model.device):
                    embeds, _, stats = splice_prompt_embeds(self.model, tokens, encoded, p.evs_rate)
                generator = make_generator(p.params, self.model.device)
            except Exception as exc:  # this request's setup (a seed out of range too)
                p.future.set_exception(exc)
                continue
            req = Request(p.rid, embeds, p.params, generator=generator)
            self._pending[p.rid] = (p, stats)
            self.scheduler.add(req)
            if req.finished:  # rejected: can never fit in the cache
                self._resolve(req)

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

    def step(self) -> list[Request]:
        plan = self.scheduler.schedule()
        finished = self.scheduler.update(plan, self.runner.step(plan)) if not plan.empty else []
        for req in finished:
            self._resolve(req)
        return finished

    def _resolve(self, req: Request) -> None:
        prepared, stats = self._pending.pop(req.rid)
        prepared.future.set_result((req, stats))
