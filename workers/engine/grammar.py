"""Constrained decoding with llguidance: the engine's only contact with the library.

Four calls, so another library (xgrammar, say) could stand in:
- compile (`GrammarCompiler.compile`, on the job thread): grammar text (contract/json_grammar.py)
  → a per-request matcher. Compiled matchers are cached by the grammar's hash and copied, so
  the thousand items of one batch with one schema compile it once.
- fill rows + consume (`TokenMasks.fill`, on the engine thread while the GPU runs the decode
  forward): each structured row's matcher takes the token sampled last step, then writes its
  next-token bitmask; both run in parallel on the library's threads, without the GIL.
- stop: a matcher that has closed its JSON allows only the stop tokens, so the row samples
  one and ends like any other; `RequestGrammar.complete` tells a JSON that ended exactly at
  max_tokens from a truncated one.

Thinking: a request in reasoning mode decodes freely until `</think>`; the matcher starts on
the token after it (the reasoning budget's forced `</think>` counts too).

Letters: V the model's vocab (logits width; tokens past the tokenizer's own vocabulary are
never allowed), W = ceil(V / 32) mask words per row, R the most rows one step samples.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from llguidance import LLExecutor, LLMatcher, LLTokenizer

log = logging.getLogger("omnibatch.grammar")
CACHED_GRAMMARS = 32  # compiled matchers kept per worker (a huge schema's can take 100s of MB)
# Mask threads: at batch 256 a step's masks take ~13 ms of one core (llguidance, 131k-token
# BPE, measured for the design) and must finish within one decode forward (~30-40 ms); the
# host's other cores decode media.
MASK_THREADS = min(4, os.cpu_count() or 1)


class RequestGrammar:
    """One request's matcher and how far it has read the request's output."""

    def __init__(self, matcher: LLMatcher, think_end: int | None):
        self.matcher = matcher
        self.think_end = think_end  # None: constrained from the first token
        self.active = think_end is None
        self.consumed = 0  # output tokens looked at

    def pending(self, output_ids: list[int]) -> list[int]:
        """Output tokens the matcher has not consumed yet (none while in reasoning)."""
        new = output_ids[self.consumed :]
        self.consumed = len(output_ids)
        if not self.active:
            if self.think_end not in new:
                return []
            self.active = True
            new = new[new.index(self.think_end) + 1 :]
        return new

    def complete(self, output_ids: list[int]) -> bool:
        """Whether the output so far is a whole answer of the grammar (at max_tokens: stop or
        length). Consumes what is pending, on the caller's thread."""
        new = self.pending(output_ids)
        if new and not self.matcher.consume_tokens(new):
            return False
        return self.active and self.matcher.is_accepting()


class GrammarCompiler:
    """The worker's tokenizer as llguidance reads it, and compiled grammars by hash.

    tokenizer_json: the checkpoint's tokenizer.json text; stop_ids: the tokens that end an
    answer (allowed once the grammar is complete). The library's tokenizer is built with the
    first grammar (about a second at a 131k vocabulary), so a worker that never sees one
    never pays for it, and a tokenizer the library cannot read fails structured jobs only.
    """

    def __init__(self, tokenizer_json: str, vocab_size: int, stop_ids: Sequence[int]):
        self._source = (tokenizer_json, vocab_size, list(stop_ids))
        self._tokenizer: LLTokenizer | None = None
        self._cache: OrderedDict[str, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                text, vocab_size, stop_ids = self._source
                self._tokenizer = LLTokenizer(text, n_vocab=vocab_size, eos_token=stop_ids)
            return self._tokenizer

    def compile(self, grammar: str, think_end: int | None = None) -> RequestGrammar:
        """grammar text → a fresh matcher for one request; ValueError if it does not compile."""
        key = hashlib.sha256(grammar.encode()).hexdigest()
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return RequestGrammar(compiled.deep_copy(), think_end)
        compiled = LLMatcher(self.tokenizer, grammar, log_level=0)  # without the GIL
        if compiled.is_error():
            raise ValueError(f"response_format does not compile: {compiled.get_error()}")
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > CACHED_GRAMMARS:
                self._cache.popitem(last=False)
            return RequestGrammar(compiled.deep_copy(), think_end)


@dataclass
class StepMasks:
    """The masks of one step: request `rid` takes row `index[rid]` of `bits` [N, W] int32, on
    the model's device (the runner picks the rows of each sampling group)."""

    index: dict[str, int]
    bits: torch.Tensor


class TokenMasks:
    """Fills the structured rows' masks of a step into pinned host memory and sends them to the
    device (non-blocking: the copy queues behind the forward). Times itself (benchmarks)."""

    def __init__(self, max_rows: int, vocab_size: int, device: torch.device):
        self.words = (vocab_size + 31) // 32
        self.max_rows, self.device = max_rows, torch.device(device)
        self._executor: LLExecutor | None = None  # threads start with the first structured step
        self._bits: torch.Tensor | None = None  # [R, W] int32
        self.fill_s: deque[float] = deque(maxlen=4096)  # CPU seconds of recent steps' fills

    def _buffer(self) -> torch.Tensor:
        if self._bits is None:
            pin = self.device.type == "cuda"
            self._executor = LLExecutor(MASK_THREADS)
            self._bits = torch.zeros(self.max_rows, self.words, dtype=torch.int32, pin_memory=pin)
        return self._bits

    def fill(self, reqs: list) -> StepMasks | None:
        """reqs: the requests sampled this step (Request objects). Returns the masks of those
        whose grammar is active, None when there are none."""
        t0 = time.perf_counter()
        rids, matchers, consume = [], [], []
        for req in reqs:
            g = req.grammar
            if g is None:
                continue
            new = g.pending(req.output_ids)
            if not g.active:
                continue
            if len(new) == 1:
                consume.append((g.matcher, new[0]))
            elif new:  # more than one token since the last fill: never in the engine's loop
                g.matcher.consume_tokens(new)
            rids.append(req.rid)
            matchers.append(g.matcher)
        if not rids:
            return None
        bits = self._buffer()
        if consume:
            accepted = self._executor.consume_token_par(consume)
            for ok, (m, token) in zip(accepted, consume, strict=True):
                if not ok:  # cannot happen for a sampled token under its own mask
                    log.error("grammar refused token %d: %s", token, m.get_error())
        n = len(rids)
        targets = list(zip(matchers, range(n), strict=True))
        self._executor.unsafe_compute_mask_ptr(targets, bits.data_ptr(), self.words * 4, n)
        index = {rid: k for k, rid in enumerate(rids)}
        masks = StepMasks(index, bits[:n].to(self.device, non_blocking=True))
        self.fill_s.append(time.perf_counter() - t0)
        return masks
