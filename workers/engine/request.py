"""A generation request as the engine tracks it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workers.engine.grammar import RequestGrammar


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. temperature 0 means greedy."""

    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # benchmark mode: always produce max_tokens
    # In thinking mode: once this many tokens were generated without `</think>`,
    # the engine forces `</think>` (the model card's reasoning budget).
    thinking_budget: int | None = None
    think_end_id: int | None = None


class RequestState(enum.Enum):
    WAITING = "waiting"  # admitted to the engine, no cache slot yet
    PREFILL = "prefill"  # holds a slot, prompt partly computed
    DECODE = "decode"  # prompt done, generating
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """One sequence: a prompt given as embeddings, grown token by token.

    prompt_embeds: [L, D] in the model dtype, on the model device; the engine drops them
    (None) once the prompt is prefilled, so a running sequence holds only its cache.
    """

    rid: str
    prompt_embeds: torch.Tensor | None
    params: SamplingParams
    state: RequestState = RequestState.WAITING
    slot: int = -1
    num_computed: int = 0  # tokens of prompt + output already in the cache
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "cancelled", "rejected"
    generator: torch.Generator | None = None
    grammar: RequestGrammar | None = None  # structured output: constrains what is sampled
    prompt_len: int = -1  # taken from prompt_embeds when not given

    def __post_init__(self) -> None:
        if self.prompt_len < 0:
            self.prompt_len = self.prompt_embeds.shape[0]

    @property
    def max_total_len(self) -> int:
        """Cache rows this request may ever need: the admission reservation."""
        return self.prompt_len + self.params.max_tokens

    @property
    def finished(self) -> bool:
        return self.state is RequestState.FINISHED
