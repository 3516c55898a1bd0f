"""Prompt construction and output parsing (docs/api.md "Prompt construction", model.md §5.2).

One user turn per request, rendered with the checkpoint's own chat template (jinja2): no
system text, the media parts first (the template puts their markers before the text), then
the text: the task's built-in instruction, then the user's `prompt` after a blank line; for
`ask` the prompt verbatim. `thinking` maps to the template's `enable_thinking`.
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from datetime import datetime
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from media.items import AudioItem, ImageItem, VideoItem
from workers.model.expand import MEDIA_TOKENS, VIDEO_MARKER

TASKS = ("caption", "summarize", "transcribe", "extract", "ask")
_INSTRUCTIONS = {
    "caption": "Describe this {media} in detail.",
    "summarize": "Summarize this {media}.",
    "transcribe": "Transcribe the speech in this {media} verbatim.",
    "extract": "Extract the key information from this {media}: text, names, numbers and dates.",
}
# Media whose "transcription" is reading the visible text rather than the speech.
_READ_TEXT = {"transcribe": "Transcribe all the text in this {media} verbatim."}


def task_text(task: str, prompt: str | None, media: str) -> str:
    """The user text of a request; `media` names the input kind (video, audio, image, document)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if task == "ask":
        if not prompt:
            raise ValueError("task 'ask' needs a prompt")
        return prompt
    table = _READ_TEXT if media in ("image", "document") and task in _READ_TEXT else _INSTRUCTIONS
    instruction = table[task].format(media=media)
    return f"{instruction}\n\n{prompt}" if prompt else instruction


def content_parts(items: list[ImageItem | VideoItem | AudioItem], text: str) -> list[dict]:
    """Chat content: one part per item (a video's soundtrack as an audio part after it), text."""
    parts: list[dict] = []
    for item in items:
        if isinstance(item, ImageItem):
            parts.append({"type": "image"})
        elif isinstance(item, VideoItem):
            parts.append({"type": "video"})
            if item.audio is not None:
                parts.append({"type": "audio"})
        elif isinstance(item, AudioItem):
            parts.append({"type": "audio"})
        else:
            raise TypeError(f"not a media item: {type(item).__name__}")
    parts.append({"type": "text", "text": text})
    return parts


def _raise(message: str):
    raise ValueError(f"chat template: {message}")


@dataclass(frozen=True)
class Output:
    text: str
    reasoning: str | None


class PromptBuilder:
    """The checkpoint's tokenizer and chat template."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str):
        self.tokenizer = tokenizer
        # the settings checkpoint templates are written for (those of HF's apply_chat_template)
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(chat_template)
        # the expansion and the output parser rely on these being single tokens
        needed = ("<think>", "</think>", *astuple(MEDIA_TOKENS))
        if missing := [t for t in needed if tokenizer.token_to_id(t) is None]:
            raise ValueError(f"tokenizer has no token for {missing}")
        self.think_end = tokenizer.token_to_id("</think>")
        self.think_start = tokenizer.token_to_id("<think>")
        self._reserved = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._reserved.append(VIDEO_MARKER)

    @classmethod
    def from_dir(cls, path: str | Path) -> PromptBuilder:
        path = Path(path)
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        template_file = path / "chat_template.jinja"
        if template_file.exists():
            template = template_file.read_text()
        else:
            cfg = json.loads((path / "tokenizer_config.json").read_text())
            template = cfg.get("chat_template")
            if not isinstance(template, str):
                raise ValueError(f"{path}: no chat_template.jinja and no chat_template string")
        return cls(tok, template)

    def sanitize(self, text: str) -> str:
        """Drop special-token and marker strings from user text: they would inject placeholders."""
        for s in self._reserved:
            text = text.replace(s, "")
        return text

    def render(
        self, items: list[ImageItem | VideoItem | AudioItem], text: str, thinking: bool
    ) -> str:
        """The prompt string with one marker per item (expanded later by expand.py)."""
        messages = [{"role": "user", "content": content_parts(items, self.sanitize(text))}]
        return self.template.render(
            messages=messages, add_generation_prompt=True, enable_thinking=thinking
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def parse_output(self, ids: list[int], thinking: bool) -> Output:
        """Generated ids (stop token excluded) -> answer text and, when present, the reasoning.

        With thinking on the prompt ends inside `<think>`, so everything before `</think>` is
        reasoning; if `</think>` never comes the whole output is reasoning and the answer is
        empty. With thinking off a stray `<think>…</think>` block is split off the same way.
        """
        if self.think_end in ids:
            k = ids.index(self.think_end)
            head = ids[:k]
            if head and head[0] == self.think_start:
                head = head[1:]
            reasoning = self.decode(head).strip()
            return Output(self.decode(ids[k + 1 :]).strip(), reasoning)
        if thinking:
            return Output("", self.decode(ids).strip())
        return Output(self.decode(ids).strip(), None)
