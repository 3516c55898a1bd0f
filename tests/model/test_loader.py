"""Checkpoint reading: config parsing, sharded weights, clear errors (quantized checkpoints:
test_quant_loader.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.checkpoint_edits import rewrite_tensor
from workers.model.checkpoint_info import parse_preprocess, read_checkpoint_info
from workers.model.checkpoint_keys import published_shapes
from workers.model.config import PATTERN_30B, OmniConfig
from workers.model.demo import demo_config_dict, write_demo_checkpoint
from workers.model.hf_config import CheckpointConfigError, parse_omni
from workers.model.loader import CheckpointError, load_model, map_name


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo"), seed=1)


@pytest.fixture
def copy(demo_dir, tmp_path):
    shutil.copytree(demo_dir, tmp_path / "ck")
    return tmp_path / "ck"


def _index(path) -> dict[str, str]:
    return json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


def _published(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in set(_index(path).values()):
        out |= load_file(path / f)
    return out


def _ours(model, name: str) -> torch.Tensor:
    """Our tensor for a published name (experts sliced out of their stack)."""
    ours = map_name(name)
    if ".mixer.experts." in ours:
        stack, rest = ours.split(".mixer.experts.")
        j, which, leaf = rest.split(".")
        return model.get_parameter(f"{stack}.mixer.experts.{which}.{leaf}")[int(j)]
    try:
        return model.get_parameter(ours)
    except AttributeError:  # router bias, BatchNorm statistics
        return model.get_buffer(ours)


def test_demo_layout_and_round_trip(demo_dir):
    files = {p.name for p in demo_dir.iterdir()}
    assert {
        "config.json",
        "preprocessor_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors.index.json",
    } <= files
    assert len(set(_index(demo_dir).values())) >= 2
    model, info = load_model(demo_dir)
    assert info.model.llm.pattern == "MEM*EME" and info.model.audio is not None
    published = _published(demo_dir)
    shapes = published_shapes(info.model)
    assert set(shapes) <= set(published)
    for name in shapes:
        ours = _ours(model, name)
        assert torch.equal(ours, published[name].to(ours.dtype)), name


def test_demo_is_deterministic(tmp_path):
    a = write_demo_checkpoint(tmp_path / "a", seed=5)
    b = write_demo_checkpoint(tmp_path / "b", seed=5)
    for f in set(_index(a).values()):
        ta, tb = load_file(a / f), load_file(b / f)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_truncated_shard_names_the_file(copy):
    shard = sorted(set(_index(copy).values()))[1]
    data = (copy / shard).read_bytes()
    (copy / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=shard):
        load_model(copy)


def test_missing_tensor_is_named(copy):
    name = "language_model.backbone.layers.3.mixer.k_proj.weight"
    rewrite_tensor(copy, name, None)
    with pytest.raises(CheckpointError, match=r"llm\.layers\.3\.mixer\.k_proj\.weight"):
        load_model(copy)


def test_missing_expert_is_named(copy):
    rewrite_tensor(copy, "language_model.backbone.layers.4.mixer.experts.2.down_proj.weight", None)
    with pytest.raises(CheckpointError, match=r"layers\.4\.mixer\.experts\.2\.down_proj"):
        load_model(copy)


def test_wrong_shape_is_named(copy):
    name = "vision_model.radio_model.model.blocks.1.mlp.fc1.weight"
    shard = rewrite_tensor(copy, name, torch.zeros(7, 32))
    with pytest.raises(
        CheckpointError, match=rf"{shard}: {name}: shape \(7, 32\), expected \(128, 32\)"
    ):
        load_model(copy)


def test_unexpected_tensor_is_named(copy):
    index = _index(copy)
    shard = index["mlp1.0.weight"]
    tensors = load_file(copy / shard) | {"mlp1.9.weight": torch.zeros(3)}
    save_file(tensors, copy / shard)
    full = json.loads((copy / "model.safetensors.index.json").read_text())
    full["weight_map"]["mlp1.9.weight"] = shard
    (copy / "model.safetensors.index.json").write_text(json.dumps(full))
    with pytest.raises(CheckpointError, match=r"mlp1\.9\.weight"):
        load_model(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["llm_config"].update(num_hidden_layers=9), "num_hidden_layers=9"),
        (lambda d: d["llm_config"].update(n_group=2), "n_group=2"),
        (lambda d: d["llm_config"].update(hybrid_override_pattern="MEX*"), "unsupported layer"),
        (lambda d: d["llm_config"].update(tie_word_embeddings=True), "untied"),
        (lambda d: d.update(downsample_ratio=0.25), "downsample_ratio"),
        (lambda d: d.update(vit_hidden_size=48), "vit_hidden_size=48"),
        (lambda d: d["vision_config"].update(video_temporal_patch_size=4), "temporal"),
        (lambda d: d.pop("llm_config"), "llm_config is missing"),
    ],
)
def test_contradictory_config_is_rejected(edit, message):
    d = demo_config_dict()
    edit(d)
    with pytest.raises(CheckpointConfigError, match=message):
        parse_omni(d)


def test_preprocessor_and_generation_files_are_read(demo_dir):
    info = read_checkpoint_info(demo_dir)
    assert info.generation.eos_token_ids == (2, 11)
    assert info.generation.temperature == 0.6
    assert info.preprocess.max_num_patches == 13312
    assert info.quant is None


@pytest.mark.parametrize(
    "key, value", [("max_num_patches", 8192), ("norm_mean", [0.5, 0.5, 0.5]), ("patch_size", 14)]
)
def test_preprocessing_the_media_pipeline_does_not_implement_is_refused(key, value):
    with pytest.raises(CheckpointConfigError, match=f"preprocessor_config.json: {key}="):
        parse_preprocess({key: value})


def test_missing_shard_file_is_named(copy):
    shard = sorted(set(_index(copy).values()))[0]
    (copy / shard).unlink()
    with pytest.raises(CheckpointError, match=shard):
        load_model(copy)


def test_published_full_size_config_gives_the_real_model():
    """A config.json shaped like the published one (RADIO given only by its timm name)."""
    d = demo_config_dict(video_pruning_rate=0.7)
    d["llm_config"].update(
        hybrid_override_pattern=PATTERN_30B,
        num_hidden_layers=52,
        hidden_size=2688,
        vocab_size=131072,
        mamba_num_heads=64,
        mamba_head_dim=64,
        n_groups=8,
        ssm_state_size=128,
        chunk_size=128,
        num_attention_heads=32,
        num_key_value_heads=2,
        head_dim=128,
        n_routed_experts=128,
        num_experts_per_tok=6,
        moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712,
        max_position_embeddings=262144,
    )
    d["vision_config"] = {
        "model_type": "radio",
        "version": "c-radio_v4-h",
        "patch_size": 16,
        "args": {"model": "vit_huge_patch16_224", "cpe_max_size": 2048, "register_multiple": 10},
    }
    d["sound_config"].update(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=8,
        intermediate_size=4096,
        subsampling_conv_channels=256,
        projection_hidden_size=4096,
    )
    d.update(projector_hidden_size=20480, vit_hidden_size=1280)
    assert parse_omni(d) == OmniConfig()


def test_explicit_vision_sizes_load_whatever_args_model_names(copy):
    """transformers reads RADIO's sizes from the config's keys and never looks at args.model;
    so do we: the backbone table only fills sizes a config leaves out."""
    cfg = json.loads((copy / "config.json").read_text())
    vision = cfg["vision_config"]
    vision["args"]["model"] = "vit_so400m_patch16_siglip_384"  # no entry of ours
    vision["intermediate_size"] = int(vision["hidden_size"] * vision.pop("mlp_ratio"))
    (copy / "config.json").write_text(json.dumps(cfg))
    model, info = load_model(copy)
    v = info.model.vision
    assert (v.hidden_size, v.num_layers, v.num_heads, v.mlp_size) == (32, 2, 2, 128)
    name = "vision_model.radio_model.model.blocks.1.mlp.fc1.weight"
    ours = _ours(model, name)
    assert torch.equal(ours, _published(copy)[name].to(ours.dtype))


@pytest.mark.parametrize("model_name", ["vit_so400m_patch16_siglip_384", None])
def test_vision_sizes_neither_given_nor_known_are_named(model_name):
    d = demo_config_dict()
    vision = d["vision_config"]
    for key in ("hidden_size", "num_attention_heads"):
        del vision[key]
    if model_name:
        vision["args"]["model"] = model_name
    with pytest.raises(CheckpointConfigError) as err:
        parse_omni(d)
    message = str(err.value)
    assert "vision_config: hidden_size, num_attention_heads missing" in message
    assert (repr(model_name) if model_name else "no args.model") in message
    assert "vit_huge_patch16_224" in message  # what it could have named


def test_backbone_table_fills_only_the_missing_sizes():
    d = demo_config_dict()
    vision = d["vision_config"]
    vision["args"]["model"] = "vit_huge_patch16_224"
    del vision["num_hidden_layers"]
    v = parse_omni(d).vision
    assert (v.hidden_size, v.num_layers, v.num_heads, v.mlp_size) == (32, 32, 2, 128)
