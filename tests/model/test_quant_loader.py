"""Quantized checkpoints (docs/model.md §6.4): the published FP8 and NVFP4 layouts kept as they
are, quantize at load, the layouts written back, precision detection, clear errors.

The demo checkpoint in a quantized layout is the BF16 demo quantized at load and saved
(`write_demo_checkpoint(precision=...)`), so loading it back is the loader round trip.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cli.main import build_parser
from contract.settings import WorkerSettings
from tests.factories import make_audio, make_image
from tests.model.checkpoint_edits import rewrite_tensor
from tests.model.quant_twin import compare_to_twins, dequantized_block
from workers.engine.generate import generate
from workers.engine.request import SamplingParams
from workers.model.cache import ForwardBatch, HybridCache
from workers.model.checkpoint_info import parse_quant, read_checkpoint_info
from workers.model.checkpoint_keys import published_shapes
from workers.model.demo import write_demo_checkpoint
from workers.model.hf_config import CheckpointConfigError
from workers.model.linear import Linear, inputs_unfused
from workers.model.loader import CheckpointError, load_model
from workers.model.omni import build_prompt_embeds
from workers.model.prompt import PromptBuilder
from workers.model.quant import BF16, FP8, NVFP4, QuantPlan

SEED = 2
LM = "language_model.backbone."


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("bf16"), seed=SEED)


@pytest.fixture(scope="module")
def published(bf16_dir, tmp_path_factory):
    """precision -> the demo checkpoint written in NVIDIA's layout of that precision."""
    root = tmp_path_factory.mktemp("quantized")
    return {p: write_demo_checkpoint(root / p, seed=SEED, precision=p) for p in (FP8, NVFP4)}


@pytest.fixture(scope="module")
def loaded(published):
    return {p: load_model(d)[0] for p, d in published.items()}


@pytest.fixture
def copy(published, tmp_path):
    def make(precision: str):
        shutil.copytree(published[precision], tmp_path / precision)
        return tmp_path / precision

    return make


def _tensors(path) -> dict[str, torch.Tensor]:
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for f in set(index.values()):
        out |= load_file(path / f)
    return out


def _edit_config(path, edit) -> None:
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("precision", [FP8, NVFP4])
def test_quantize_at_load_save_load_gives_identical_tensors(precision, bf16_dir, loaded):
    at_load, _ = load_model(bf16_dir, quantize=precision)
    again = loaded[precision]
    assert again.llm.plan == at_load.llm.plan == QuantPlan.recipe(again.config.llm, precision)
    mine = at_load.state_dict()
    for name, t in again.state_dict().items():
        if name.endswith("num_batches_tracked"):  # BatchNorm's counter: never read, never loaded
            continue
        assert t.dtype == mine[name].dtype and torch.equal(t, mine[name]), name


# What each module of the LLM holds in NVIDIA's two layouts (research note §1).
LAYOUT = {
    FP8: dict.fromkeys(
        ["in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "experts"]
        + ["shared_experts.up_proj", "shared_experts.down_proj"],
        FP8,
    ),
    NVFP4: {"in_proj": FP8, "out_proj": FP8, "q_proj": BF16, "k_proj": BF16, "v_proj": BF16}
    | {"o_proj": FP8, "experts": NVFP4, "shared_experts.up_proj": FP8}
    | {"shared_experts.down_proj": FP8},
}
DTYPES = {
    (FP8, "weight"): torch.float8_e4m3fn,
    (NVFP4, "weight"): torch.uint8,
    (NVFP4, "weight_scale"): torch.float8_e4m3fn,
}


def _format_of(name: str, precision: str) -> str:
    if not name.startswith(LM + "layers."):
        return BF16  # embeddings, lm_head, encoders, projectors
    module = name.split(".mixer.", 1)[-1].rsplit(".", 1)[0]
    module = "experts" if module.startswith("experts.") else module
    return LAYOUT[precision].get(module, BF16)


@pytest.mark.parametrize("precision", [FP8, NVFP4])
def test_demo_checkpoint_has_the_published_layout(precision, published):
    path = published[precision]
    info = read_checkpoint_info(path)
    assert info.quant.precision == precision and info.quant.kv_cache_fp8
    tensors = _tensors(path)
    shapes = published_shapes(info.model, QuantPlan.recipe(info.model.llm, precision))
    assert set(shapes) <= set(tensors)
    assert {n for n in tensors if n not in shapes} == {  # what inference skips
        n for n in tensors if "input_conditioner" in n or "summary_idxs" in n or "featurizer" in n
    }
    for name, shape in shapes.items():
        t = tensors[name]
        leaf = name.rsplit(".", 1)[1]
        fmt = _format_of(name, precision)
        assert tuple(t.shape) == shape, name
        if leaf in ("weight_scale_2", "input_scale", "k_scale", "v_scale") or (
            fmt == FP8 and leaf == "weight_scale"
        ):
            assert t.dtype == torch.float32 and t.item() > 0, name
        else:
            assert t.dtype == DTYPES.get((fmt, leaf), torch.float32), name
    k_scales = [n for n in shapes if n.endswith("k_proj.k_scale")]
    assert len(k_scales) == info.model.llm.pattern.count("*")


@pytest.mark.parametrize("precision", [FP8, NVFP4])
def test_quantized_path_equals_the_dequantized_path(precision, loaded):
    """Every layer against its twin holding the dequantized weights (activations rounded to
    the same static scales, the same FP8 KV): the quantized layers use the right tensors at
    every call site. They differ only where float rounding moves a value across an E4M3
    rounding boundary on one path (a K or V row rounded one step apart moves every later
    token of its sequence a little), and, for the FP8 experts, by the rounding of
    h = relu(up x)² to E4M3 inside their kernel, which the twin does not do."""
    llm = loaded[precision].llm
    gen = torch.Generator().manual_seed(0)
    e = llm.embed(torch.randint(0, llm.config.vocab_size, (98,), generator=gen))
    steps = [(e[:64], [40, 24], [0, 0]), (e[64:96], [20, 12], [40, 24])]
    steps.append((e[96:], [1, 1], [60, 36]))  # decode
    cosines = compare_to_twins(llm, lambda i: dequantized_block(llm, i), steps, llm.kv_dtype)
    for i, cos in enumerate(cosines):
        fp8_experts = llm.config.pattern[i] == "E" and precision == FP8
        assert cos.mean() > (0.999 if fp8_experts else 0.9999), (i, cos.mean())
        assert cos.min() > 0.999, (i, cos.min())


def _prefill_and_decode(llm) -> torch.Tensor:
    """Logits [66, V] of a prefill of two sequences (40 and 24 tokens) and a decode step."""
    gen = torch.Generator().manual_seed(3)
    e = llm.embed(torch.randint(0, llm.config.vocab_size, (66,), generator=gen))
    dtype = llm.embeddings.weight.dtype
    cache = HybridCache(llm.config, 2, 66, 66, "cpu", dtype, llm.kv_dtype)
    slots = [cache.alloc_slot() for _ in range(2)]
    cache.reserve(slots, [41, 25])
    steps = [(e[:64], [40, 24], [0, 0]), (e[64:], [1, 1], [40, 24])]
    return torch.cat([
        llm.logits(llm(x, ForwardBatch.build(lens, slots, ctx, "cpu"), cache))
        for x, lens, ctx in steps
    ])  # fmt: skip


@pytest.mark.parametrize("precision", [FP8, NVFP4])
def test_fused_activation_quantization_changes_no_logit(precision, published):
    """A bf16 model (CPU refs): the norms hand Mamba's FP8 in_proj and out_proj their input in
    E4M3, the shared expert's up projection hands down relu² in E4M3; the logits are bit for
    bit those of the unfused path (`inputs_unfused`)."""
    llm = load_model(published[precision], "cpu", torch.bfloat16)[0].llm
    seen = []  # (input dtype, output dtype) of every FP8 linear's call
    fp8 = [m for m in llm.modules() if isinstance(m, Linear) and m.fmt == FP8]
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append((a[0].dtype, out.dtype)))
             for m in fp8]  # fmt: skip
    fused = _prefill_and_decode(llm)
    mamba, moe = (2 * llm.config.pattern.count(k) for k in "ME")  # layers x 2 steps
    e4m3, bf16 = torch.float8_e4m3fn, torch.bfloat16
    assert seen.count((e4m3, bf16)) == 2 * mamba + moe  # in_proj, out_proj, shared down
    assert seen.count((bf16, e4m3)) == moe  # shared up with the relu² epilogue
    seen.clear()
    with inputs_unfused():
        unfused = _prefill_and_decode(llm)
    for h in hooks:
        h.remove()
    assert set(seen) == {(bf16, bf16)}
    assert torch.equal(fused, unfused)


def test_calibrating_a_bf16_model_reads_unquantized_inputs(bf16_dir, loaded):
    """Quantize at load into bf16, where norms and the shared expert's up projection could
    quantize for the FP8 linears: calibration's hooks still see the bf16 activations (the
    scales are the fp32 model's up to bf16 rounding), not E4M3 codes of a zeroed scale."""
    llm = load_model(bf16_dir, "cpu", torch.bfloat16, quantize=FP8)[0].llm
    want = loaded[FP8].llm
    for name, m in llm.named_modules():
        if isinstance(m, Linear) and m.fmt == FP8:
            ref = want.get_submodule(name).input_scale
            assert abs(m.input_scale / ref - 1) < 0.25, (name, m.input_scale, ref)


@pytest.mark.parametrize("precision", [FP8, NVFP4])
def test_omni_forward_with_media(precision, published, loaded):
    """Encoders, splicing, a prefill and decode steps through the quantized LLM (CPU refs)."""
    model = loaded[precision]
    llm = model.llm
    assert llm.precision == precision and llm.kv_dtype == torch.float8_e4m3fn
    prompts = PromptBuilder.from_dir(published[precision])
    gen = torch.Generator().manual_seed(1)
    items = [make_image((4, 4), gen), make_audio([16000], gen)]
    prompt = prompts.render(items, "Describe.", False)
    embeds, _, stats = build_prompt_embeds(model, prompts.tokenizer, prompt, items, 0.0)
    assert stats.image_tokens > 0 and stats.audio_tokens > 0
    n = embeds.shape[0]
    cache = HybridCache(llm.config, 1, n, n, "cpu", torch.float32, llm.kv_dtype)
    slot = cache.alloc_slot()
    cache.reserve([slot], [n])
    hidden = llm(embeds, ForwardBatch.build([n], [slot], [0], "cpu"), cache)
    assert torch.isfinite(llm.logits(hidden)).all()
    assert cache.k_pool[0].dtype == torch.float8_e4m3fn and cache.k_pool[0].float().abs().sum() > 0
    out = generate(llm, [embeds], [SamplingParams(max_tokens=4, ignore_eos=True)])[0]
    assert len(out.ids) == 4


def test_kv_scales_default_to_one(copy, loaded):
    path = copy(FP8)
    names = [n for n in _tensors(path) if n.endswith(("k_proj.k_scale", "v_proj.v_scale"))]
    for n in names:
        rewrite_tensor(path, n, None)
    model, _ = load_model(path)
    for i in model.config.llm.attention_layers:
        attn, calibrated = model.llm.layers[i].mixer, loaded[FP8].llm.layers[i].mixer
        assert attn.k_proj.k_scale.item() == attn.v_proj.v_scale.item() == 1.0
        assert calibrated.k_proj.k_scale.item() != 1.0


E1 = LM + "layers.1.mixer.experts.2.up_proj."


def test_per_tensor_scales_stored_as_one_element_vectors_load(copy, loaded):
    path = copy(NVFP4)
    names = [LM + "layers.3.mixer.o_proj.input_scale", E1 + "weight_scale_2"]
    tensors = _tensors(path)
    for n in names:
        rewrite_tensor(path, n, tensors[n].reshape(1))
    model, _ = load_model(path)
    want = loaded[NVFP4].state_dict()
    assert all(torch.equal(t, want[n]) for n, t in model.state_dict().items() if "scale" in n)


@pytest.mark.parametrize(
    ("name", "tensor", "message"),
    [
        (E1 + "weight_scale", None, r"llm\.layers\.1\.mixer\.experts\.2\.up_proj\.weight_scale"),
        (
            LM + "layers.0.mixer.in_proj.input_scale",
            None,
            r"layers\.0\.mixer\.in_proj\.input_scale",
        ),
        (
            E1 + "weight_scale",
            torch.zeros(32, 2, dtype=torch.float8_e4m3fn),
            rf"{E1}weight_scale: shape \(32, 2\), expected \(32, 4\)",
        ),
        (
            E1 + "weight",
            torch.zeros(32, 64, dtype=torch.float8_e4m3fn),
            rf"{E1}weight: shape \(32, 64\), expected \(32, 32\)",
        ),
        (
            LM + "layers.3.mixer.o_proj.weight_scale",
            torch.ones(64),
            r"layers\.3\.mixer\.o_proj\.weight_scale: shape \(64,\), expected \(\)",
        ),
        (
            LM + "layers.3.mixer.q_proj.weight",
            torch.zeros(64, 64, dtype=torch.float8_e4m3fn),
            r"q_proj\.weight is fp8 but the quantization config's quantized_layers does not",
        ),
    ],
)
def test_bad_quantized_tensor_is_named(copy, name, tensor, message):
    path = copy(NVFP4)
    rewrite_tensor(path, name, tensor)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_quantized_weights_need_a_quant_config(copy):
    path = copy(FP8)
    _edit_config(path, lambda c: c.pop("quantization_config"))
    with pytest.raises(CheckpointError, match="in_proj.weight is fp8 but .* no quantization"):
        load_model(path)


def test_quant_config_must_match_the_weights(copy):
    path = copy(NVFP4)
    _edit_config(path, lambda c: c.update(quantization_config={"quant_algo": "FP8"}))
    with pytest.raises(CheckpointError, match=r"says FP8 \(fp8\) but the weights are nvfp4"):
        load_model(path)


def test_quantize_at_load_takes_bf16_checkpoints_only(published):
    with pytest.raises(CheckpointError, match="already nvfp4"):
        load_model(published[NVFP4], quantize=FP8)


PER_LAYER = {
    LM + "layers.1.mixer.experts.0.up_proj": {"quant_algo": "NVFP4", "group_size": 16},
    LM + "layers.0.mixer.in_proj": {"quant_algo": "FP8"},
}


@pytest.mark.parametrize(
    ("config", "precision", "kv"),
    [
        # config.json quantization_config, as the published repos write it
        ({"quant_method": "modelopt", "quant_algo": "FP8"}, FP8, False),
        (
            {"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"}
            | {"quantized_layers": PER_LAYER}
            | {"kv_cache_scheme": {"type": "float", "num_bits": 8, "dynamic": False}},
            NVFP4,
            True,
        ),
        (
            {
                "quant_algo": "MIXED_PRECISION",
                "quantized_layers": {LM + "x": {"quant_algo": "FP8"}},
            },
            FP8,
            False,
        ),
        # hf_quant_config.json's "quantization", older exports
        ({"quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": "FP8"}, NVFP4, True),
        ({"quant_algo": "W4A16_NVFP4", "kv_cache_quant_algo": None}, NVFP4, False),
    ],
)
def test_precision_is_read_from_the_quant_config(config, precision, kv):
    q = parse_quant(config)
    assert (q.precision, q.kv_cache_fp8) == (precision, kv)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"quant_algo": "W4A16_AWQ"}, "W4A16_AWQ"),
        ({"quant_method": "awq", "quant_algo": "FP8"}, "quant_method='awq'"),
        ({"quant_algo": "NVFP4", "group_size": 32}, "group_size=32"),
        ({"quant_algo": "FP8", "kv_cache_quant_algo": "NVFP4"}, "KV cache quantization 'NVFP4'"),
        ({"quant_algo": "MIXED_PRECISION"}, "without quantized_layers"),
    ],
)
def test_unsupported_quant_config_is_refused(config, message):
    with pytest.raises(CheckpointConfigError, match=message):
        parse_quant(config)


def test_hf_quant_config_json_is_read_when_config_json_has_none(copy):
    path = copy(FP8)
    cfg = json.loads((path / "config.json").read_text())
    quant = cfg.pop("quantization_config")
    (path / "config.json").write_text(json.dumps(cfg))
    legacy = {"quant_algo": quant["quant_algo"], "kv_cache_quant_algo": "FP8"}
    (path / "hf_quant_config.json").write_text(json.dumps({"quantization": legacy}))
    assert read_checkpoint_info(path).quant.precision == FP8
    assert load_model(path)[0].llm.plan.kv_fp8


def test_quantize_flag_and_setting(monkeypatch):
    args = build_parser().parse_args(["run", "a.mp4", "--quantize", "nvfp4"])
    assert args.quantize == NVFP4
    assert (
        build_parser().parse_args(["demo-checkpoint", "d", "--precision", "fp8"]).precision == FP8
    )
    monkeypatch.setenv("OMNIBATCH_QUANTIZE", "fp8")
    assert WorkerSettings().quantize == FP8
    monkeypatch.setenv("OMNIBATCH_QUANTIZE", "int4")
    with pytest.raises(ValueError, match="quantize"):
        WorkerSettings()
