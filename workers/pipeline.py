"""One job end to end: decode the media, build the prompts, run the model, assemble the result.

`Pipeline.load` loads the model once per process; `Pipeline.run` is what the GPU worker and
`omnibatch run` call per job. Long media becomes several model calls ("units": video chunks,
document pages), all handed to the engine at once; each becomes a segment of the result,
and `summarize` adds a last text-only pass over the segment texts. Several threads may call
`run` at once: the engine batches their model calls together. `cancelled` is polled while
they run; a stopped job returns what finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from workers.engine.engine import Engine, Prepared, engine_config
from workers.engine.request import SamplingParams
from workers.media.errors import MediaTooLong
from workers.media.limits import DEFAULT_LIMITS, MediaLimits
from workers.media.options import MediaOptions
from workers.media.pool import MediaPool
from workers.media_budget import MediaBudget, shm_budget
from workers.media_units import Unit, decode, host_release
from workers.model.demo import DEMO_NAME, DEMO_VERSION, write_demo_checkpoint
from workers.model.loader import load_model
from workers.model.omni import PromptStats
from workers.model.prompt import PromptBuilder, task_text

log = logging.getLogger("omnibatch.pipeline")
DEMO_WARNING = "demo-random: a tiny random-weight model; its text is meaningless"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    revision: str | None
    precision: str


@dataclass
class JobOutput:
    text: str
    reasoning: str | None
    segments: list[dict] | None
    usage: dict
    warning: str | None = None


@dataclass
class _Call:
    """One model call's result."""

    text: str
    reasoning: str | None
    prompt_tokens: int
    output_tokens: int
    stats: dict = field(default_factory=dict)
    finished: bool = True  # False: cut short by a cancel, not part of the result


def demo_checkpoint_dir(cache_dir: Path | None = None) -> Path:
    """The demo checkpoint, generated once per cache dir (atomically: workers may race)."""
    root = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omnibatch"
    target = root / f"demo-checkpoint-v{DEMO_VERSION}"
    if not (target / "model.safetensors.index.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".demo-"))
        write_demo_checkpoint(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class Pipeline:
    def __init__(
        self,
        model,
        info,
        prompts: PromptBuilder,
        model_info: ModelInfo,
        demo: bool,
        gpu_memory_gb: float | None = None,
        limits: MediaLimits = DEFAULT_LIMITS,
        media_workers: int | None = None,
    ):
        self.model, self.info, self.prompts = model, info, prompts
        self.model_info = model_info
        self.demo = demo
        # One file's decoded pixels must fit in shared memory beside the others' (pool.py).
        self.limits = replace(limits, max_decoded_bytes=limits.max_decoded_bytes or shm_budget())
        # decoding runs ahead, one process per core unless the host's cores are shared out
        self.media = MediaPool(media_workers, limits=self.limits)
        # ... as far as shared memory allows: jobs wait for room before decoding
        self.media_budget = MediaBudget(shm_budget(), first=self.media.num_workers)
        # The worker runs several jobs in threads: their media decoding overlaps, and their
        # model calls meet in the one engine, which batches them.
        self.engine = Engine(model, prompts.tokenizer, engine_config(model, gpu_memory_gb)).start()
        self.stop_ids = tuple(
            sorted(set(info.generation.eos_token_ids) | {info.model.llm.eos_token_id})
        )

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None,
        device: str = "cpu",
        gpu_memory_gb: float | None = None,
        limits: MediaLimits = DEFAULT_LIMITS,
        media_workers: int | None = None,
    ) -> Pipeline:
        demo = model_dir is None
        if demo:
            model_dir = demo_checkpoint_dir()
            log.warning("no model given: using the tiny random demo checkpoint at %s", model_dir)
        model, info = load_model(model_dir, device)
        dtype = model.llm.embeddings.weight.dtype
        precision = (
            info.quant.quant_algo.lower() if info.quant else str(dtype).removeprefix("torch.")
        )
        name = DEMO_NAME if demo else Path(model_dir).resolve().name
        info_ = ModelInfo(name, None, precision)
        prompts = PromptBuilder.from_dir(model_dir)
        return cls(model, info, prompts, info_, demo, gpu_memory_gb, limits, media_workers)

    def close(self) -> None:
        self.engine.close()
        self.media.close()

    def _sampling(self, request) -> SamplingParams:
        g = request.generation
        return SamplingParams(
            max_tokens=g.max_tokens,
            temperature=g.temperature,
            top_p=g.top_p if g.top_p is not None else 1.0,
            top_k=g.top_k or 0,
            seed=g.seed,
            stop_ids=self.stop_ids,
        )

    def _submit(self, prompts: list[tuple[str, list, Callable | None]], request) -> list[Prepared]:
        """Rendered prompts with their items and host releases (`media_units.host_release`)
        -> engine requests, batched with every other job's. `prompts` is emptied: from here
        the engine is the only holder of the media (it copies them to the GPU, or encodes
        them, then lets go: the release frees their budget and frame buffers)."""
        params = self._sampling(request)
        evs = request.video.evs_rate
        preps = [
            Prepared(t, items, params, evs, on_host_release=release)
            for t, items, release in prompts
        ]
        prompts.clear()
        for p in preps:
            self.engine.submit(p)
        return preps

    def _collect(
        self, preps: list[Prepared], request, cancelled, progress: Progress | None = None
    ) -> list[_Call]:
        """Wait for the submitted requests; `cancelled` is polled while they run."""
        params = preps[0].params
        pending, stopping = {p.future for p in preps}, False
        while pending:
            if not stopping and cancelled():
                stopping = True
                for p in preps:
                    self.engine.cancel(p.rid)
            pending = wait(pending, timeout=0.05).not_done
            if progress:
                progress("generating", len(preps) - len(pending), len(preps))
        return [self._call(p.future, params, request) for p in preps]

    def _call(self, future, params: SamplingParams, request) -> _Call:
        if future.cancelled():  # cancelled before the engine took it
            return _Call("", None, 0, 0, vars(PromptStats(0, 0, 0, 0, 0)), False)
        req, stats = future.result()
        if req.finish_reason == "rejected":
            raise MediaTooLong(
                f"the input needs {stats.prompt_tokens + params.max_tokens} tokens of model "
                "context, more than this worker's cache holds; use a shorter time range or chunk"
            )
        out = self.prompts.parse_output(req.output_ids, request.generation.thinking)
        done = req.finish_reason != "cancelled"
        n_out = len(req.output_ids)
        return _Call(out.text, out.reasoning, stats.prompt_tokens, n_out, vars(stats), done)

    def run(
        self, request, input_path, progress: Progress, cancelled: Callable[[], bool]
    ) -> JobOutput:
        t0 = time.monotonic()
        progress("decoding", 0, 1)
        v = request.video
        opts = MediaOptions(
            media_type=request.media_type.value if request.media_type else None,
            fps=v.fps,
            max_frames=v.max_frames,
            start_s=v.start_s,
            end_s=v.end_s,
            chunk_s=v.chunk_s,
            use_audio=v.use_audio,
        )
        task = request.task.value
        kind, units, preps, media_usage = self._decode_and_submit(
            input_path, opts, request, cancelled
        )
        progress("decoding", 1, 1)
        calls = self._collect(preps, request, cancelled, progress) if preps else []
        # a cancel keeps what finished (api.md); spent tokens still count in the usage
        done = [(u, c) for u, c in zip(units, calls, strict=False) if c.finished]
        final = self._final(task, kind, done, len(units), request, cancelled)
        usage = self._usage(media_usage, calls + ([final] if final else []), t0)
        outs = [c for _, c in done]
        return JobOutput(
            text=final.text if final else "\n\n".join(c.text for c in outs),
            reasoning=self._reasoning(outs, final),
            segments=_segments(done) if len(units) > 1 else None,
            usage=usage,
            warning=DEMO_WARNING if self.demo else None,
        )

    def _decode_and_submit(
        self, input_path, opts: MediaOptions, request, cancelled
    ) -> tuple[str, list[Unit], list[Prepared], dict]:
        """Decode part by part (media_units.decode: long videos and PDFs in parts), handing each
        part's units to the engine as it lands, so early chunks generate while later ones
        decode. -> (the media's kind, the submitted units, their requests, the media usage).

        Until a unit reaches the engine its media count in the shared-memory budget; a unit
        never submitted (a cancel) is released here. A part that fails to decode fails the
        job: what was submitted is cancelled first.
        """
        thinking = request.generation.thinking
        kind, units, preps, usage = "", [], [], {}
        parts = decode(str(input_path), opts, self.media, self.media_budget)
        try:
            for part in parts:
                kind = part.kind
                text = task_text(request.task.value, request.prompt, kind)
                for k, v in part.usage.items():
                    usage[k] = usage.get(k, 0) + v
                releases = [
                    host_release(self.media_budget, self.media, u.items) for u in part.units
                ]
                submitted = []
                try:
                    prompts = [
                        (self.prompts.render(u.items, text, thinking), u.items, release)
                        for u, release in zip(part.units, releases, strict=True)
                    ]
                    for u in part.units:
                        u.items = []  # the engine's (see _submit); units keep times and pages
                    if not cancelled():
                        submitted = self._submit(prompts, request)
                finally:
                    for release in releases[len(submitted) :]:
                        release()
                units += part.units[: len(submitted)]
                preps += submitted
                if cancelled():
                    break
        except BaseException:
            for p in preps:
                self.engine.cancel(p.rid)
            raise
        finally:
            parts.close()  # a part still decoding lands unused (media_units.decode)
        return kind, units, preps, usage

    def _final(self, task, kind, done, num_units, request, cancelled) -> _Call | None:
        """`summarize` over several segments: one more, text-only, pass over their texts."""
        if task != "summarize" or num_units < 2 or len(done) < num_units or cancelled():
            return None
        lines = [f"{_label(u)}: {c.text}" for u, c in done]
        text = (
            f"Here are summaries of consecutive parts of a {kind}:\n\n"
            + "\n".join(lines)
            + f"\n\nWrite one summary of the whole {kind}."
        )
        prompt = self.prompts.render([], text, request.generation.thinking)
        return self._collect(self._submit([(prompt, [], None)], request), request, cancelled)[0]

    @staticmethod
    def _reasoning(calls: list[_Call], final: _Call | None) -> str | None:
        parts = [c.reasoning for c in calls + ([final] if final else []) if c.reasoning]
        return "\n\n".join(parts) if parts else None

    def _usage(self, media: dict, calls: list[_Call], t0: float) -> dict:
        on_gpu = self.model.device.type == "cuda"
        return {
            **media,
            "input_tokens": sum(c.prompt_tokens for c in calls),
            "output_tokens": sum(c.output_tokens for c in calls),
            "video_tokens_before_evs": sum(c.stats["video_tokens_before_evs"] for c in calls),
            "video_tokens_after_evs": sum(c.stats["video_tokens_after_evs"] for c in calls),
            "gpu_seconds": time.monotonic() - t0 if on_gpu else 0.0,
        }


def _label(u: Unit) -> str:
    if u.page is not None:
        return f"Page {u.page}"
    return f"{u.start_s:.0f}s to {u.end_s:.0f}s"


def _segments(done: list[tuple[Unit, _Call]]) -> list[dict]:
    return [
        {"start_s": u.start_s, "end_s": u.end_s, "page": u.page, "text": c.text} for u, c in done
    ]
