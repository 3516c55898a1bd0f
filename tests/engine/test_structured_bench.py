"""CPU smoke run of benchmarks/structured.py: the demo LLM with the full 131072-token vocabulary
and the 512-token demo tokenizer, so the masks must shut out every token the tokenizer lacks."""

from __future__ import annotations

import json

from benchmarks.structured import main


def test_structured_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = ["--small", "--batch", "2", "--ctx", "8", "--steps", "2", "--temperature", "1"]
    result = main([*args, "--schemas", "digit"])  # one token, then a stop token
    assert json.loads((tmp_path / "structured.json").read_text()) == result
    assert result["vocab"] == 131072
    assert result["foreign_tokens"]["free"] > 0  # free rows roam the whole vocabulary
    assert result["foreign_tokens"]["structured"] == 0
    assert result["json_finished"] > 0 and result["json_valid"] == result["json_finished"]
    assert result["fill_cpu_ms"]["mean"] > 0
    assert all(result["tok_s"][m] > 0 for m in ("free", "structured"))
