"""benchmarks.kernels_quant --small --sweep runs in the interpreter (the GPU run's code path
at tiny shapes) and every row's op agrees with its reference."""

import json

from benchmarks import kernels_quant


def test_small_benchmark_runs_and_checks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    kernels_quant.main(["--small", "--sweep"])
    rows = json.loads((tmp_path / "kernels_quant.json").read_text())["rows"]
    ops = {r["op"].split(" [")[0] for r in rows}
    assert {"fp8_linear", "moe_experts_fp8", "moe_experts_nvfp4"} <= ops
    assert {"attention_prefill fp8 kv", "attention_decode fp8 kv"} <= ops
    errs = [r["max_rel_err"] for r in rows if r["max_rel_err"] is not None]
    assert errs and max(errs) < 5e-2  # bf16 outputs (truncated in the interpreter)
    assert "sweep best moe_experts_nvfp4" in capsys.readouterr().out
