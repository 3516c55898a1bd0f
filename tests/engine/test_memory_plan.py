"""The memory plan's arithmetic (CPU, no allocation): the full-size config built on the meta
device at the caps a user may set, quantized weight totals, the demo checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from workers.engine.engine import Engine, EngineConfig
from workers.engine.memory_plan import (
    FRAGMENTATION_SHARE,
    HOST_EMBEDDINGS_BELOW_SLOTS,
    MIN_SEQ_LEN,
    GiB,
    MemoryPlanError,
    encode_pieces,
    encode_room,
    min_piece_bytes,
    plan_memory,
    weight_bytes,
)
from workers.engine.workspace import StageCosts
from workers.model.config import OmniConfig
from workers.model.expand import video_tokens_per_s
from workers.model.omni import OmniModel

FULL = OmniConfig()
NVFP4_BYTES = int(20.87 * GiB)  # the NVFP4 checkpoint as published (docs: low-memory §2)


@pytest.fixture(scope="module")
def full_weights() -> int:
    return weight_bytes(OmniModel(FULL, device="meta", dtype=torch.bfloat16))


def check(plan, weights: int) -> None:
    """What every plan must hold: it fits its cap, each stage's batch fits the workspace,
    the cache takes any request the prompt staging does."""
    c = plan.costs
    assert plan.weights == weights
    assert plan.total() <= plan.cap
    assert sum(b for _, b, _ in plan.parts()) == plan.total()
    assert c.prefill(plan.prefill_token_budget, 1) <= plan.workspace
    assert c.sample(plan.sample_rows) <= plan.workspace and plan.sample_rows >= 1
    pieces = encode_pieces(c, plan.workspace)
    assert c.vit(pieces.vit_tokens) <= plan.workspace
    assert pieces.audio_frames * c.audio_frame <= plan.workspace
    assert min_piece_bytes(c) <= plan.workspace
    assert plan.max_seq_len >= MIN_SEQ_LEN and plan.kv_rows >= plan.max_seq_len
    assert plan.prompt_budget >= plan.max_seq_len
    assert plan.max_running >= 1 and plan.decode_graph_sizes[-1] == plan.max_running
    assert list(plan.decode_graph_sizes) == sorted(set(plan.decode_graph_sizes))
    # the allocator's headroom beside the parts that come and go, unplanned
    coming_and_going = plan.workspace + plan.upload_bytes + plan.prompt_budget * c.prompt_row
    assert plan.headroom >= int(FRAGMENTATION_SHARE * coming_and_going) - 2
    # the engine admits 10 s of 2-fps video with its soundtrack, unpruned, in one piece (the
    # pipeline's default chunks shrink to what it admits)
    per_s = video_tokens_per_s(2, 0.0, True, 0)  # encoder output rows, before EVS
    assert encode_room(c, plan.workspace, plan.prompt_budget) >= 10 * per_s * (
        c.encoded_row + c.prompt_row
    )


@pytest.mark.parametrize("gib", [24, 40])
def test_bf16_weights_are_refused_below_their_size_with_the_numbers(full_weights, gib):
    with pytest.raises(MemoryPlanError) as err:
        plan_memory(FULL, full_weights, gib * GiB, 2)
    msg = str(err.value)
    assert f"GPU_MEMORY_GB={gib}.0" in msg
    assert f"weights {full_weights / GiB:.2f} GiB" in msg and "smallest workspace" in msg


def test_the_quantized_weight_total_fits_25_gib():
    """With the weights as published in NVFP4 (the plan takes their bytes, whatever the
    dtype), 25 GiB holds a working plan; the same cap refuses bf16 weights."""
    plan = plan_memory(FULL, NVFP4_BYTES, 25 * GiB, 2)
    check(plan, NVFP4_BYTES)
    assert plan.max_running >= 8 and plan.prefill_token_budget >= 2048


def test_25_gib_gives_the_slots_a_share_before_the_longest_request():
    """The 25 GiB mode as run (NVFP4 weights as an H100's allocator held them after the random
    build, FP8 KV): the longest request takes a quarter of the cache (LONG_SEQ_SHARE), not
    half: 20 slots instead of 13, and one request may still hold 48 K tokens."""
    weights = int(21.32 * GiB)
    plan = plan_memory(FULL, weights, 25 * GiB, 2, kv_itemsize=1)
    check(plan, weights)
    assert plan.max_running >= 20 and plan.max_seq_len >= 48 * 1024


@pytest.mark.parametrize("gib", [64, 80, 141])
def test_full_size_plans(full_weights, gib):
    plan = plan_memory(FULL, full_weights, gib * GiB, 2)
    check(plan, full_weights)
    assert plan.total() > plan.cap - (16 << 20)  # what is left goes to the cache


def test_64_gib_holds_the_bf16_weights_as_an_h100_reserved_them():
    """61.75 GiB: the allocator's reserve after the full model loaded on an H100; with the
    runtime bounded at 1 GiB a 64 GiB cap refused it by 0.03 GiB (RESULTS.md, session 8)."""
    weights = int(61.75 * GiB)
    check(plan_memory(FULL, weights, 64 * GiB, 2), weights)


def test_caps_just_above_the_smallest_plan_still_hold_a_whole_sequence(full_weights):
    """Near the minimum the slots' state must not eat the KV rows of the one request the
    plan promises (on an H100, 64 GiB with 61.75 GiB of weights as the allocator reserved
    them planned 3 slots and 28 471 rows, under MIN_SEQ_LEN)."""
    floor = None
    for step in range(200):
        cap = int((62.5 + step * 0.025) * GiB)
        try:
            plan = plan_memory(FULL, full_weights, cap, 2)
        except MemoryPlanError:
            continue
        floor = floor or cap
        check(plan, full_weights)
    assert floor is not None and floor < 64 * GiB


def test_more_memory_never_means_smaller_budgets(full_weights):
    plans = [plan_memory(FULL, full_weights, gib * GiB, 2) for gib in (64, 71, 80, 100, 141)]
    for small, big in zip(plans, plans[1:], strict=False):
        for name in ("max_running", "kv_rows", "workspace", "prefill_token_budget", "upload_bytes"):
            assert getattr(small, name) <= getattr(big, name), name
    roomy = plans[-1]
    assert roomy.max_running == 512 and roomy.prefill_token_budget == 16384


def test_the_table_names_every_part(full_weights):
    plan = plan_memory(FULL, full_weights, 80 * GiB, 2)
    table = plan.table()
    for name, _, _ in plan.parts():
        assert name in table
    assert f"{plan.max_running} slots" in table and "80.00 GiB cap" in table


def test_weight_bytes_count_each_tensor_as_stored():
    """Quantized tensors count their own element size (FP8: 1 byte, packed NVFP4: 1 byte per
    2 values), buffers count too."""
    m = torch.nn.Module()
    m.w8 = torch.nn.Parameter(torch.zeros(64, 32, dtype=torch.float8_e4m3fn), requires_grad=False)
    m.w4 = torch.nn.Parameter(torch.zeros(64, 16, dtype=torch.uint8), requires_grad=False)
    m.register_buffer("scale", torch.zeros(64, 2, dtype=torch.float32))
    assert weight_bytes(m) == 64 * 32 + 64 * 16 + 64 * 2 * 4


def test_demo_model_plan_and_engine_budgets(tmp_path):
    """The demo checkpoint's plan under a small cap (the smallest pieces still resize a 4K
    frame: ≈ 0.3 GiB whatever the model), and an engine built from it."""
    from workers.model.demo import write_demo_checkpoint
    from workers.model.loader import load_model
    from workers.model.prompt import PromptBuilder

    write_demo_checkpoint(tmp_path)
    model, _ = load_model(tmp_path, "cpu")
    weights = weight_bytes(model)
    runtime, slack = 1 << 20, 1 << 20
    plan = plan_memory(model.config, weights, weights + GiB, 4, runtime, slack)
    check(plan, weights)
    assert plan.costs == StageCosts.of(model.config, 4)
    with pytest.raises(MemoryPlanError):
        plan_memory(model.config, weights, weights + GiB // 4, 4, runtime, slack)
    config = replace(EngineConfig.from_plan(plan), decode_graph_sizes=())  # no graphs on a CPU
    eng = Engine(model, PromptBuilder.from_dir(tmp_path).tokenizer, config)
    assert eng.cache.num_free_slots == plan.max_running
    assert eng.cache.kv_capacity_tokens == plan.kv_rows
    assert eng.scheduler.config.prefill_token_budget == plan.prefill_token_budget
    assert eng.steps.sample_rows == plan.sample_rows


def test_weights_on_the_gpu_leave_out_a_table_in_host_memory():
    """plan_for counts the tensors on the model's device only: with the embedding table in
    host memory (a cap under HOST_EMBEDDINGS_BELOW_SLOTS slots) the plan gets its bytes."""
    m = torch.nn.Module()
    m.table = torch.nn.Parameter(torch.zeros(100, 8), requires_grad=False)
    m.w = torch.nn.Parameter(torch.zeros(10, 8, device="meta"), requires_grad=False)
    assert weight_bytes(m) == 110 * 8 * 4
    assert weight_bytes(m, torch.device("meta")) == 10 * 8 * 4
    table = FULL.llm.vocab_size * FULL.llm.hidden_size * 2
    on_gpu = plan_memory(FULL, int(21.32 * GiB), 25 * GiB, 2, kv_itemsize=1)
    on_host = plan_memory(FULL, int(21.32 * GiB) - table, 25 * GiB, 2, kv_itemsize=1)
    assert on_gpu.max_running < HOST_EMBEDDINGS_BELOW_SLOTS
    assert on_host.max_running >= on_gpu.max_running + 6
    assert on_host.prefill_token_budget > on_gpu.prefill_token_budget
