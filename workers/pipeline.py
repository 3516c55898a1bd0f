"""One job end to end: decode the media, build the prompts, run the model, assemble the result.

`Pipeline.load` loads the model once per process. `Pipeline.submit` takes a job and returns
at once with its `Job` handle; the GPU worker, `omnibatch run` and the end-to-end benchmark
all drive the pipeline so. Each job runs in one of the pipeline's job threads (at most
`max_jobs` at once; later ones wait their turn), its media decoded in the process pool as far
ahead of the GPU as the shared-memory budget allows, and every job's model calls meet in the
one engine, which batches them.

Long media becomes several model calls ("units": video chunks, document pages), handed to the
engine part by part as they decode; each becomes a segment of the result, and `summarize`
adds a last text-only pass over the segment texts. A cancel stops the job's model calls at the
engine's next step and its decoding before the next part; the result keeps what finished.

A JSON response_format constrains every model call (engine/grammar.py): each segment's answer
is parsed into `segments[i].json`; `json` of the whole output is the one call's answer, or
the `summarize` pass's, and None when the output joins several segments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from contract.schemas import JobCreate
from contract.settings import WorkerSettings
from media.errors import MediaTooLong
from media.image import DEFAULT_BUDGET
from media.limits import DEFAULT_LIMITS, MediaLimits
from media.options import MediaOptions
from media.pool import MediaPool
from workers.engine.engine import Engine, EngineConfig, Prepared, engine_config
from workers.engine.grammar import GrammarCompiler
from workers.engine.request import SamplingParams
from workers.job import Job, JobOutput, JobThreads
from workers.media_budget import MediaBudget, shm_budget
from workers.media_units import Unit, decode, host_release
from workers.model.checkpoint_info import CheckpointInfo
from workers.model.demo import DEMO_NAME, DEMO_VERSION, write_demo_checkpoint
from workers.model.expand import label_tokens, video_tokens_per_s
from workers.model.loader import load_model
from workers.model.omni import OmniModel, PromptStats
from workers.model.prompt import PromptBuilder, task_text

log = logging.getLogger("omnibatch.pipeline")
DEMO_WARNING = "demo-random: a tiny random-weight model; its text is meaningless"
# with a JSON response_format, when an answer did not parse (its `json` is null)
TRUNCATED_WARNING = "generation.max_tokens was reached before the JSON was complete"
NO_JSON_WARNING = "the model ended without a JSON answer (in its reasoning)"
# A video chunk's prompt beside its media: chat template, system and task text, at most.
PROMPT_TEXT_TOKENS = 512
# Decode processes' niceness beside a GPU engine (one process a core): the engine thread,
# which launches every kernel, then finds a core at each wake-up instead of queueing behind
# them while the GPU idles (10 gives it ≈ 9 × a decoder's CPU share). Beside a CPU engine,
# which computes the model on its own thread, the decoders keep its priority.
DECODER_NICENESS = 10
Progress = Callable[[str, int, int], None]  # (stage, done, total), from the job's thread


def _quiet(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class ModelInfo:
    name: str
    revision: str | None
    precision: str


@dataclass(frozen=True)
class PipelineConfig:
    limits: MediaLimits = DEFAULT_LIMITS
    max_jobs: int = 256  # jobs running at once (MAX_CONCURRENT_JOBS); later ones wait their turn
    # decoded media held ahead of the GPU (MEDIA_GB); None: half of /dev/shm
    media_bytes: int | None = None
    # The standard workloads (benchmarks/e2e.py) render pages at the size docs/performance.md
    # gives, and have every model call generate its `max_tokens` whatever random weights sample.
    image_budget: int = DEFAULT_BUDGET
    ignore_eos: bool = False
    media_workers: int | None = None  # decode processes (MEDIA_WORKERS); None: one per core

    @classmethod
    def of(cls, s: WorkerSettings, **changes) -> PipelineConfig:
        """A worker's pipeline: its MAX_CONCURRENT_JOBS, MEDIA_WORKERS, MEDIA_GB and limits."""
        media_bytes = None if s.media_gb is None else int(s.media_gb * 1e9)
        return cls(
            s.media_limits, s.max_concurrent_jobs, media_bytes, media_workers=s.media_workers,
            **changes,
        )  # fmt: skip


@dataclass
class _Call:
    """One model call's result."""

    text: str
    reasoning: str | None
    prompt_tokens: int
    output_tokens: int
    stats: dict = field(default_factory=dict)
    finished: bool = True  # False: cut short by a cancel, not part of the result
    finish_reason: str | None = None  # "stop" or "length"
    json: object = None  # structured output: `text` parsed (None when it is not whole)


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
        model: OmniModel,
        info: CheckpointInfo,
        prompts: PromptBuilder,
        model_info: ModelInfo,
        demo: bool,
        engine: EngineConfig,
        config: PipelineConfig = PipelineConfig(),
    ):
        self.model, self.info, self.prompts = model, info, prompts
        self.model_info, self.demo, self.config = model_info, demo, config
        # One file's decoded pixels must fit in shared memory beside the others' (pool.py).
        limits = config.limits
        self.limits = replace(limits, max_decoded_bytes=limits.max_decoded_bytes or shm_budget())
        # decoding runs ahead, one process per core unless the host's cores are shared out
        nice = DECODER_NICENESS if model.device.type == "cuda" else 0
        self.media = MediaPool(config.media_workers, limits=self.limits, niceness=nice)
        # ... as far as shared memory allows: jobs wait for room before decoding
        self.media_budget = MediaBudget(shm_budget(config.media_bytes), self.media.num_workers)
        if engine.plan is not None:
            log.info("%s", engine.plan.table())
        self.engine = Engine(model, prompts.tokenizer, engine).start()
        self.stop_ids = tuple(
            sorted(set(info.generation.eos_token_ids) | {info.model.llm.eos_token_id})
        )
        self.grammars = GrammarCompiler(
            prompts.tokenizer.to_str(), model.config.llm.vocab_size, self.stop_ids
        )
        self._threads = JobThreads(self._run, config.max_jobs)
        self._label_tokens = label_tokens(prompts.encode)

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None,
        device: str = "cpu",
        gpu_memory_gb: float | None = None,
        config: PipelineConfig = PipelineConfig(),
        quantize: str | None = None,
    ) -> Pipeline:
        """quantize: "fp8" / "nvfp4" turns a BF16 checkpoint into that published layout at
        load (workers/model/loader.py); None serves the checkpoint as it is."""
        demo = model_dir is None
        if demo:
            model_dir = demo_checkpoint_dir()
            log.warning("no model given: using the tiny random demo checkpoint at %s", model_dir)
        model, info = load_model(model_dir, device, quantize=quantize)
        name = DEMO_NAME if demo else Path(model_dir).resolve().name
        info_ = ModelInfo(name, None, model.llm.precision)
        prompts = PromptBuilder.from_dir(model_dir)
        engine = engine_config(model, gpu_memory_gb)
        return cls(model, info, prompts, info_, demo, engine, config)

    def close(self) -> None:
        """Stop the jobs' threads (cancelling the jobs not done), the engine, the media pool."""
        self._threads.close()
        self.engine.close()
        self.media.close()

    # ---- called by the job's owner -------------------------------------------------------
    def submit(
        self, request: JobCreate, input_path: str | Path, progress: Progress | None = None
    ) -> Job:
        """Queue one job; returns at once. `progress(stage, done, total)` is called from the
        job's thread: ("decoding", 0, 1) → ("decoding", 1, 1) once every part is with the
        engine → ("generating", k, n) for k = 0 … n as its n model calls finish."""
        job = Job(self.engine, str(input_path))
        self._threads.submit(job, request, Path(input_path), progress or _quiet)
        return job

    # ---- in the job's thread ---------------------------------------------------------------
    def _run(self, job: Job, request: JobCreate, input_path: Path, progress: Progress) -> JobOutput:
        t0 = time.monotonic()
        if job.cancelled:  # while it waited for a thread: nothing ran
            return JobOutput("", None, None, self._usage({}, [], t0), self._warning([], False))
        progress("decoding", 0, 1)
        kind, units, preps, media_usage = self._decode_and_submit(job, input_path, request)
        progress("decoding", 1, 1)
        calls = self._collect(preps, request, progress) if preps else []
        # a cancel keeps what finished (api.md); spent tokens still count in the usage
        done = [(u, c) for u, c in zip(units, calls, strict=False) if c.finished]
        final = self._final(job, kind, done, len(units), request)
        summary = final if final is not None and final.finished else None
        usage = self._usage(media_usage, calls + ([final] if final else []), t0)
        outs = [c for _, c in done]
        answer = summary or (outs[0] if len(units) == 1 and outs else None)  # one call's text
        behind = [answer] if answer else outs
        finish = None
        if behind:
            finish = "length" if any(c.finish_reason == "length" for c in behind) else "stop"
        structured = request.response_format.grammar() is not None
        return JobOutput(
            text=summary.text if summary else "\n\n".join(c.text for c in outs),
            reasoning=self._reasoning(outs, summary),
            segments=_segments(done) if len(units) > 1 else None,
            usage=usage,
            warning=self._warning(outs + ([summary] if summary else []), structured),
            json=answer.json if answer else None,
            finish_reason=finish,
        )

    def _media_options(self, request: JobCreate) -> MediaOptions:
        v = request.video
        return MediaOptions(
            media_type=request.media_type.value if request.media_type else None,
            fps=v.fps,
            max_frames=v.max_frames,
            start_s=v.start_s,
            end_s=v.end_s,
            chunk_s=self._chunk_s(request),
            use_audio=v.use_audio,
            image_budget=self.config.image_budget,
        )

    def _chunk_s(self, request: JobCreate) -> float | None:
        """The request's video chunk; unset, the default (max_frames / fps), unless a chunk's
        prompt and output would not fit the longest sequence the engine holds, or its encoder
        outputs and prompt the engine's encode room (a small GPU_MEMORY_GB): then shorter
        chunks, so a long video runs as more model calls."""
        v = request.video
        if v.chunk_s is not None:
            return v.chunk_s
        engine, c = self.engine, self.engine.costs
        per_s = video_tokens_per_s(v.fps, self._evs_rate(request), v.use_audio, self._label_tokens)
        rows_per_s = video_tokens_per_s(v.fps, 0.0, v.use_audio, 0)  # encoder outputs, pre-EVS
        bytes_per_s = rows_per_s * c.encoded_row + per_s * c.prompt_row
        text = PROMPT_TEXT_TOKENS + len(self.prompts.encode(request.prompt or ""))
        fit = min(
            (engine.longest_sequence - request.generation.max_tokens - text) / per_s,
            (engine.encode_room - text * c.prompt_row) / bytes_per_s,
        )
        if fit >= v.max_frames / v.fps:
            return None
        return max(2 / v.fps, fit)  # a tubelet at least: shorter cannot fit anything

    def _sampling(self, request: JobCreate) -> SamplingParams:
        g = request.generation
        return SamplingParams(
            max_tokens=g.max_tokens,
            temperature=g.temperature,
            top_p=g.top_p if g.top_p is not None else 1.0,
            top_k=g.top_k or 0,
            seed=g.seed,
            stop_ids=self.stop_ids,
            ignore_eos=self.config.ignore_eos,
        )

    def _evs_rate(self, request: JobCreate) -> float:
        """The request's EVS rate; unset, the checkpoint's `video_pruning_rate` (api.md)."""
        rate = request.video.evs_rate
        return self.info.model.video_pruning_rate if rate is None else rate

    def _submit(
        self, job: Job, prompts: list[tuple[str, list, Callable | None]], request: JobCreate
    ) -> list[Prepared]:
        """Rendered prompts with their items and host releases (`media_units.host_release`)
        -> engine requests, batched with every other job's. `prompts` is emptied: from here
        the engine is the only holder of the media (it copies them to the GPU, or encodes
        them, then lets go: the release frees their budget and frame buffers)."""
        params = self._sampling(request)
        evs = self._evs_rate(request)
        grammar = request.response_format.grammar()
        # reasoning runs free: the grammar starts after `</think>` (thinking off: at once)
        think_end = self.prompts.think_end if request.generation.thinking else None
        preps = [
            Prepared(
                t, items, params, evs, on_host_release=release,
                grammar=self.grammars.compile(grammar, think_end) if grammar else None,
            )
            for t, items, release in prompts
        ]  # fmt: skip
        prompts.clear()
        for p in preps:
            self.engine.submit(p)
        job.track(preps)
        return preps

    def _collect(
        self, preps: list[Prepared], request: JobCreate, progress: Progress
    ) -> list[_Call]:
        """Wait for the submitted requests (a cancel resolves them at the engine's next step)."""
        futures = [p.future for p in preps]
        progress("generating", 0, len(futures))
        for n, _ in enumerate(as_completed(futures), 1):
            progress("generating", n, len(futures))
        return [self._call(f, preps[0].params, request) for f in futures]

    def _call(self, future, params: SamplingParams, request: JobCreate) -> _Call:
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
        parsed = None
        if req.grammar is not None and req.finish_reason == "stop":
            with contextlib.suppress(ValueError):  # no answer: it ended in its reasoning
                parsed = json.loads(out.text)
        return _Call(
            out.text, out.reasoning, stats.prompt_tokens, n_out, vars(stats), done,
            req.finish_reason, parsed,
        )  # fmt: skip

    def _warning(self, calls: list[_Call], structured: bool) -> str | None:
        notes = [DEMO_WARNING] if self.demo else []
        if structured and any(c.json is None for c in calls):
            cut = any(c.finish_reason == "length" for c in calls)
            notes.append(TRUNCATED_WARNING if cut else NO_JSON_WARNING)
        return "; ".join(notes) or None

    def _decode_and_submit(
        self, job: Job, input_path: Path, request: JobCreate
    ) -> tuple[str, list[Unit], list[Prepared], dict]:
        """Decode part by part (media_units.decode: long videos and PDFs in parts), handing each
        part's units to the engine as it lands, so early chunks generate while later ones
        decode. -> (the media's kind, the submitted units, their requests, the media usage).

        Until a unit reaches the engine its media count in the shared-memory budget; a unit
        never submitted (a cancel) is released here. A part that fails to decode fails the
        job (whose thread then cancels what was submitted).
        """
        kind, units, preps, usage = "", [], [], {}
        thinking = request.generation.thinking
        parts = decode(str(input_path), self._media_options(request), self.media, self.media_budget)
        try:
            for part in parts:
                kind = job.media_type = part.kind
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
                    if not job.cancelled:
                        submitted = self._submit(job, prompts, request)
                finally:
                    for release in releases[len(submitted) :]:
                        release()
                units += part.units[: len(submitted)]
                preps += submitted
                if job.cancelled:
                    break
        finally:
            parts.close()  # a part still decoding lands unused (media_units.decode)
        return kind, units, preps, usage

    def _final(
        self, job: Job, kind: str, done: list, num_units: int, request: JobCreate
    ) -> _Call | None:
        """`summarize` over several segments: one more, text-only, pass over their texts."""
        if request.task.value != "summarize" or num_units < 2 or len(done) < num_units:
            return None
        if job.cancelled:  # after its last segment finished
            return None
        lines = [f"{_label(u)}: {c.text}" for u, c in done]
        text = (
            f"Here are summaries of consecutive parts of a {kind}:\n\n"
            + "\n".join(lines)
            + f"\n\nWrite one summary of the whole {kind}."
        )
        prompt = self.prompts.render([], text, request.generation.thinking)
        (call,) = self._collect(self._submit(job, [(prompt, [], None)], request), request, _quiet)
        return call

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
        {"start_s": u.start_s, "end_s": u.end_s, "page": u.page, "text": c.text, "json": c.json,
         "finish_reason": c.finish_reason}
        for u, c in done
    ]  # fmt: skip
