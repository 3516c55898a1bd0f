"""The full-size model in NVIDIA's FP8 and NVFP4 layouts on one GPU, random weights (issue 13).

    pytest -m gpu -s tests/gpu/test_quant_model_gpu.py

Per precision, one at a time (an H100 80 GB holds the bf16 model or a quantized one, never
both):
  * weights on the GPU: the whole Omni model's tensor bytes and torch.cuda.memory_allocated
    after the build, FP8 <= 33.5 GiB, NVFP4 <= 21.5 GiB;
  * every layer against its dequantized twin (the same quantized weights, static activation
    scales and FP8 KV, dequantized, through the bf16 kernels; tests/model/quant_twin.py) on
    the same input and starting state: mean token cosine >= 0.999;
  * reported, no bar: every layer against the original bf16 weights it was quantized from
    (`fullsize.random_block`), and greedy-token agreement over 256 decode steps with the bf16
    model's own greedy continuation fed back (teacher forcing).
The bf16 reference continuation is computed first, its model freed before any quantized one
is built. About 5 minutes on an H100.
"""

from __future__ import annotations

import gc

import pytest
import torch

from tests.model.quant_twin import compare_to_twins, dequantized_block
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.fullsize import build_fullsize, build_fullsize_omni, random_block
from workers.model.quant import FP8, NVFP4

pytestmark = pytest.mark.gpu
GIB = 2**30
WEIGHT_BUDGET_GIB = {FP8: 33.5, NVFP4: 21.5}
STEPS = 256  # greedy decode steps compared
PROMPT = 64  # tokens of each of the two prompts


@pytest.fixture(scope="module", autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


@torch.no_grad()
def greedy(llm, prompts: torch.Tensor, forced: torch.Tensor | None = None) -> torch.Tensor:
    """prompts [B, L] -> the argmax after the prompt and after each of STEPS - 1 decode steps,
    [B, STEPS]. Each decode step feeds `forced[:, s]` when given (teacher forcing), else the
    model's own argmax."""
    B, L = prompts.shape
    cache = HybridCache(llm.config, B, B * (L + STEPS), L + STEPS, "cuda", torch.bfloat16,
                        llm.kv_dtype)  # fmt: skip
    slots = [cache.alloc_slot() for _ in range(B)]
    cache.reserve(slots, [L] * B)
    batch = ForwardBatch.build([L] * B, slots, [0] * B, "cuda")
    hidden = llm(llm.embed(prompts.reshape(-1)), batch, cache)
    out = [llm.logits(hidden.view(B, L, -1)[:, -1]).argmax(-1)]
    for s in range(STEPS - 1):
        fed = out[-1] if forced is None else forced[:, s]
        cache.reserve(slots, [L + s + 1] * B)
        batch = ForwardBatch.build([1] * B, slots, [L + s] * B, "cuda")
        out.append(llm.logits(llm(llm.embed(fed), batch, cache)).argmax(-1))
    return torch.stack(out, 1)


def make_prompts(vocab: int) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(7)
    return torch.randint(0, vocab, (2, PROMPT), device="cuda", generator=gen)


@pytest.fixture(scope="module")
def bf16_continuation(cuda):
    """(prompts, the bf16 model's greedy continuation), its model freed."""
    _free()
    llm = build_fullsize(device="cuda", dtype=torch.bfloat16)
    prompts = make_prompts(llm.config.vocab_size)
    ids = greedy(llm, prompts)
    del llm
    _free()
    return prompts, ids


def make_steps(llm) -> list:
    """Two sequences prefilled together (one in two chunks), then four decode steps."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    V = llm.config.vocab_size
    a = torch.randint(0, V, (300,), device="cuda", generator=gen)
    b = torch.randint(0, V, (177,), device="cuda", generator=gen)
    nxt = torch.randint(0, V, (4, 2), device="cuda", generator=gen)
    plan = [([a[:200], b], [0, 0]), ([a[200:], b[:1]], [200, 177])]
    plan += [([nxt[i, :1], nxt[i, 1:]], [300 + i, 178 + i]) for i in range(4)]
    return [(llm.embed(torch.cat(ids)), [len(i) for i in ids], ctx) for ids, ctx in plan]


def report(label: str, pattern: str, cosines: list[torch.Tensor]) -> None:
    for kind, name in (("M", "mamba"), ("*", "attention"), ("E", "moe")):
        per_layer = [c.mean().item() for c, k in zip(cosines, pattern, strict=True) if k == kind]
        worst = min(c.min().item() for c, k in zip(cosines, pattern, strict=True) if k == kind)
        print(
            f"{label} {name:>9s}: mean token cosine per layer {min(per_layer):.5f}.."
            f"{max(per_layer):.5f}, min token {worst:.4f}"
        )


@pytest.mark.parametrize("precision", [FP8, NVFP4])
@torch.no_grad()
def test_quantized_model(precision, bf16_continuation):
    prompts, bf16_ids = bf16_continuation
    _free()
    before = torch.cuda.memory_allocated()
    model = build_fullsize_omni(device="cuda", dtype=torch.bfloat16, precision=precision)
    try:
        _free()
        allocated = (torch.cuda.memory_allocated() - before) / GIB
        tensors = [*model.parameters(), *model.buffers()]
        held = sum(t.numel() * t.element_size() for t in tensors) / GIB
        llm = model.llm
        print(
            f"\n{precision}: weights {held:.2f} GiB in tensors, {allocated:.2f} GiB allocated "
            f"(budget {WEIGHT_BUDGET_GIB[precision]} GiB)"
        )
        assert llm.precision == precision
        assert held <= WEIGHT_BUDGET_GIB[precision]
        assert allocated <= WEIGHT_BUDGET_GIB[precision]

        pattern = llm.config.pattern
        steps = make_steps(llm)
        twins = compare_to_twins(llm, lambda i: dequantized_block(llm, i), steps, llm.kv_dtype)
        report(f"{precision} vs dequantized", pattern, twins)
        originals = compare_to_twins(
            llm, lambda i: random_block(llm.config, i, "cuda"), steps, torch.bfloat16
        )
        report(f"{precision} vs original bf16", pattern, originals)
        for i, c in enumerate(originals):
            print(f"  layer {i:2d} {pattern[i]}: vs original bf16 {c.mean():.5f}")

        forced = greedy(llm, prompts, forced=bf16_ids)
        agree = (forced == bf16_ids).float().mean(1)
        print(
            f"{precision}: greedy-token agreement with bf16 over {STEPS} teacher-forced steps: "
            + ", ".join(f"{a:.1%}" for a in agree.tolist())
        )
        for i, c in enumerate(twins):
            assert c.mean() >= 0.999, (precision, i, pattern[i], c.mean().item())
    finally:
        del model
        _free()
