"""`response_format` → an llguidance grammar, without a tokenizer (docs/api.md "Structured output").

The gateway validates every schema at submit, so a schema the library cannot compile is a 422
there rather than a failed job; the worker builds its token matchers from the same grammar text
(workers/engine/grammar.py). One set of options serves both:
- compact JSON (`whitespace_flexible: false`): with free whitespace a model can emit spaces and
  newlines until max_tokens (vllm #38696);
- `strict: true` refuses keywords the library does not implement; `strict: false` (OpenAI's
  default) ignores them (`lenient`), so the output may not check them.
A schema's own `x-guidance` (the library's options) is dropped: a whitespace pattern there
could bring the runaway back.
"""

from __future__ import annotations

import json
from functools import lru_cache

from llguidance import LLMatcher

JSON_OBJECT_SCHEMA = {"type": "object"}
MAX_MESSAGE = 500  # characters of the library's complaint passed on to the client


def json_grammar(schema: dict, strict: bool) -> str:
    """A JSON Schema → the grammar text LLMatcher takes (cheap: it compiles nothing yet)."""
    schema = {k: v for k, v in schema.items() if k != "x-guidance"}
    overrides = {"whitespace_flexible": False, "lenient": not strict}
    return LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=overrides)


@lru_cache(maxsize=64)
def grammar_problem(grammar: str | None) -> str | None:
    """Why `grammar` does not compile (the library's reason), None when it does or there is
    no grammar (free text). Compiled without a tokenizer; cached: a batch's lines mostly share
    one schema, and a big one takes up to a second."""
    if grammar is None:
        return None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if not is_error:
        return None
    return messages[0][:MAX_MESSAGE] if messages else "invalid schema"
