"""The engine on the GPU (demo checkpoint, bf16): media copied to the GPU by the submitting
threads gives the same greedy outputs as media the engine copies itself, and its memory goes
back to the cache the engine allocates from."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import torch

from media.items import ImageItem, media_bytes
from tests.engine.test_engine import EVS, GREEDY, mixed_requests
from tests.factories import make_audio, make_video
from workers.engine.engine import Engine, EngineConfig, Prepared
from workers.engine.memory_plan import plan_for
from workers.engine.stats import StageStats
from workers.engine.upload import MediaUploader
from workers.model.demo import write_demo_checkpoint
from workers.model.loader import load_model
from workers.model.prompt import PromptBuilder

pytestmark = pytest.mark.gpu


def test_uploader_copies_within_its_cap():
    g = torch.Generator().manual_seed(0)
    video = make_video(5, (6, 8), g, make_audio([40000], g))
    frames = torch.randint(0, 256, (6, 40, 52, 3), generator=g, dtype=torch.uint8)
    video.tubelets = frames.view(3, 2, 40, 52, 3).permute(0, 1, 4, 2, 3)  # as the pool sends
    n = media_bytes([video])
    up = MediaUploader(torch.device("cuda"), n, StageStats())
    (moved,), held = up.upload([video])
    assert held == n == up.held_bytes
    assert moved.tubelets.is_cuda and moved.tubelets.stride() == video.tubelets.stride()
    assert torch.equal(moved.tubelets.cpu(), video.tubelets)
    assert torch.equal(moved.audio.clips[0].cpu(), video.audio.clips[0])
    assert up.upload([video]) == ([video], 0)  # over the cap: left on the host
    up.release(held)
    assert up.held_bytes == 0


def test_uploads_from_many_threads_return_to_the_engines_cache():
    """Memory the job threads uploaded, once freed, serves the engine's next allocations of
    that size: no new segments (with each thread's stream owning its blocks, 8 threads left
    8 caches the default stream could not use)."""
    n, size = 8, 64 << 20
    up = MediaUploader(torch.device("cuda"), n * size, StageStats())
    images = [ImageItem(torch.full((size // 4,), float(k)), (2, 2)) for k in range(n)]
    with ThreadPoolExecutor(n) as ex:
        moved = list(ex.map(lambda item: up.upload([item])[0][0], images))
    assert [m.pixels[0].item() for m in moved] == [float(k) for k in range(n)]
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    del moved
    again = [torch.empty(size // 4, device="cuda") for _ in range(n)]  # the engine's stream
    assert torch.cuda.memory_reserved() == reserved, "the uploads' blocks were not reused"
    del again


def test_uploaded_media_gives_the_same_outputs(tmp_path):
    write_demo_checkpoint(tmp_path)
    model, _ = load_model(tmp_path, "cuda", torch.bfloat16)
    pb = PromptBuilder.from_dir(tmp_path)
    reqs = mixed_requests(pb, 10)
    outputs = []
    for cap in (1 << 30, 0):  # every request uploaded; none
        cfg = EngineConfig(max_running=4, kv_capacity_tokens=1 << 14, max_seq_len=4096,
                           prefill_token_budget=200, max_upload_bytes=cap)  # fmt: skip
        eng = Engine(model, pb.tokenizer, cfg)
        released = []
        try:
            preps = [
                Prepared(t, items, GREEDY, EVS, on_host_release=partial(released.append, k))
                for k, (t, items) in enumerate(reqs)
            ]
            # All queued before the engine starts: both runs batch alike (bf16 outputs depend
            # on the batch a request shares, and copying on submit changes its timing).
            futures = [eng.submit(p) for p in preps]
            if cap:  # copied on submit: the host copies were let go there and then
                assert sorted(released) == [k for k, (_, items) in enumerate(reqs) if items]
            eng.start()
            outputs.append([f.result(timeout=120)[0].output_ids for f in futures])
        finally:
            eng.close()
        assert eng.uploader.held_bytes == 0
        assert all(p.items == [] for p in preps)
        assert sorted(released) == list(range(len(reqs)))
    assert outputs[0] == outputs[1]
    assert all(len(ids) == GREEDY.max_tokens for ids in outputs[0])


def test_a_planned_engine_caps_the_allocator_and_grows_segments_in_place(tmp_path, monkeypatch):
    """With a memory plan the engine caps torch's allocator and puts what is allocated from
    then on in expandable segments (docs/memory.md): its cache, and a block asked for after.
    Both settings are the process's, so the test puts them back."""
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    write_demo_checkpoint(tmp_path)
    model, _ = load_model(tmp_path, "cuda", torch.bfloat16)
    pb = PromptBuilder.from_dir(tmp_path)
    plan = plan_for(model, 4.0)
    try:
        eng = Engine(model, pb.tokenizer, EngineConfig.from_plan(plan))
        block = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
        segments = torch.cuda.memory_snapshot()
        mine = [s for s in segments
                if s["address"] <= block.data_ptr() < s["address"] + s["total_size"]]  # fmt: skip
        assert len(mine) == 1 and mine[0]["is_expandable"]
        assert sum(s["total_size"] for s in segments if s["is_expandable"]) >= 64 << 20
        with pytest.raises(torch.OutOfMemoryError):  # past the cap, whatever the card has
            torch.empty(plan.torch_cap, dtype=torch.uint8, device="cuda")
        del block, eng
    finally:
        torch._C._accelerator_setAllocatorSettings("expandable_segments:False")
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_embedding_table_in_host_memory_gives_the_same_outputs(tmp_path):
    """A small cap moves the embedding table to pinned host memory (memory_plan.plan_for):
    prompts and decode steps (through the CUDA graphs) then gather their rows on the host.
    Greedy outputs equal those with the table on the GPU, and the GPU no longer holds it."""
    write_demo_checkpoint(tmp_path)
    model, _ = load_model(tmp_path, "cuda", torch.bfloat16)
    pb = PromptBuilder.from_dir(tmp_path)
    reqs = mixed_requests(pb, 6)
    outputs = []
    for on_host in (False, True):
        if on_host:
            model.llm.keep_embeddings_on_host()
            table = model.llm.embeddings.weight
            assert table.device.type == "cpu" and table.is_pinned()
            assert model.device.type == "cuda"
        cfg = EngineConfig(max_running=8, kv_capacity_tokens=1 << 14, max_seq_len=4096,
                           decode_graph_sizes=(1, 2, 4, 8))  # fmt: skip
        eng = Engine(model, pb.tokenizer, cfg)
        try:
            futures = [eng.submit(Prepared(t, items, GREEDY, EVS)) for t, items in reqs]
            eng.start()
            outputs.append([f.result(timeout=120)[0].output_ids for f in futures])
        finally:
            eng.close()
    assert outputs[0] == outputs[1]
    assert all(len(ids) == GREEDY.max_tokens for ids in outputs[0])
