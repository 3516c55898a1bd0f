"""Parakeet encoder + sound_projection against the transformers 5.24.0 omni reference (CPU, fp32).

The reference keeps ceil((frames + 1) / 8) rows per clip, one more than NVIDIA's
ceil(frames / 8) when frames is a multiple of 8 (docs/model.md §9.4): the 30 s clip below (3000
frames)
is such a case, so rows are compared per clip on NVIDIA's count.
"""

from __future__ import annotations

import pytest
import torch

from media.items import AudioItem
from tests.model.parity import TINY_TEXT_CONFIG, rel_err
from workers.model.audio import AudioEncoder, encode_audio, encode_audios
from workers.model.config import AudioConfig
from workers.model.projectors import SoundProjector

omni = pytest.importorskip("transformers.models.nemotron_h_omni.modeling_nemotron_h_omni")
omni_cfg = pytest.importorskip("transformers.models.nemotron_h_omni.configuration_nemotron_h_omni")

WIDTH, PROJ_HIDDEN, MEL = 64, 96, 128
LLM_WIDTH = TINY_TEXT_CONFIG["hidden_size"]
TINY = AudioConfig(
    hidden_size=WIDTH,
    num_layers=2,
    num_heads=4,
    ffn_size=128,
    conv_kernel=9,
    subsampling_channels=16,
)


def _reference():
    cfg = omni_cfg.NemotronH_Omni_Reasoning_V3_Config(
        vision_config=dict(
            model_type="radio",
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            video_temporal_patch_size=2,
        ),
        text_config=TINY_TEXT_CONFIG,
        audio_config=dict(
            hidden_size=WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            conv_kernel_size=9,
            subsampling_conv_channels=16,
            num_mel_bins=MEL,
            projection_hidden_size=PROJ_HIDDEN,
            projection_bias=False,
            convolution_bias=False,
        ),
        vision_hidden_size=32,
        audio_token_id=27,
    )
    model = omni.NemotronH_Omni_Reasoning_V3(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*model.audio_tower.named_parameters(), *model.audio_tower.named_buffers()]:
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise.abs())
            elif name.endswith("weight") and "norm" in name.split(".")[-2]:
                t.copy_(1 + 0.1 * noise)
            elif t.is_floating_point() and "inv_freq" not in name:
                t.copy_(0.15 * noise)
        for t in model.embed_audio.parameters():
            t.copy_(0.15 * torch.randn(t.shape, generator=gen))
    return model


def _ours_from(ref) -> tuple[AudioEncoder, SoundProjector]:
    encoder = AudioEncoder(TINY).eval()
    tower = {k: v for k, v in ref.audio_tower.state_dict().items() if "inv_freq" not in k}
    encoder.load_state_dict(tower, strict=True)
    projector = SoundProjector(WIDTH, PROJ_HIDDEN, LLM_WIDTH).eval()
    names = {"norm": "layer_norm", "linear1": "linear_1", "linear2": "linear_2"}
    sd = ref.embed_audio.state_dict()
    projector.load_state_dict({f"{k}.weight": sd[f"{v}.weight"] for k, v in names.items()})
    return encoder, projector


@pytest.fixture(scope="module")
def towers():
    ref = _reference()
    return ref, *_ours_from(ref)


def _clip(samples: int, gen) -> torch.Tensor:
    """Mel features as the extractor lays them out: samples//160 valid frames + one zeroed."""
    valid = samples // 160
    return torch.cat([torch.randn(valid, MEL, generator=gen), torch.zeros(1, MEL)])


def _item(seconds: float, gen) -> AudioItem:
    total = int(seconds * 16000)
    sizes = [480000] * (total // 480000) + ([total % 480000] if total % 480000 else [])
    return AudioItem([_clip(n, gen) for n in sizes], num_samples=total, clip_samples=sizes)


@torch.no_grad()
def test_audio_matches_reference(towers):
    ref, encoder, projector = towers
    gen = torch.Generator().manual_seed(1)
    items = [_item(35.0, gen), _item(3.0, gen)]  # clips of 30 s + 5 s, and 3 s
    got = encode_audios(encoder, projector, items)

    clips = [c for item in items for c in item.clips]
    valid = torch.tensor([n // 160 for item in items for n in item.clip_samples])
    features = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    mask = torch.arange(features.shape[1])[None] < valid[:, None]
    expected = ref.get_audio_features(features, mask).pooler_output
    ref_rows = ref.audio_tower._get_subsampling_output_length(valid + 1).tolist()
    ref_clips = expected.split(ref_rows)

    start = 0
    for item, g in zip(items, got, strict=True):
        assert g.shape == (item.num_tokens, LLM_WIDTH)
        ours_clips = g.split([-(-(n // 160) // 8) for n in item.clip_samples])
        for o, r in zip(ours_clips, ref_clips[start : start + len(item.clips)], strict=True):
            assert r.shape[0] - o.shape[0] in (0, 1)
            assert rel_err(o, r[: o.shape[0]]) < 1e-4
        start += len(item.clips)
    assert [g.shape[0] for g in got] == [375 + 63, 38]


@torch.no_grad()
def test_single_item_call_equals_batched(towers):
    _, encoder, projector = towers
    gen = torch.Generator().manual_seed(2)
    items = [_item(3.0, gen), _item(3.0, gen), _item(1.234, gen)]
    batched = encode_audios(encoder, projector, items)
    for item, b in zip(items, batched, strict=True):
        assert rel_err(encode_audio(encoder, projector, item), b) < 1e-5


@torch.no_grad()
def test_frame_cap_splits_forwards_without_changing_outputs(towers):
    _, encoder, projector = towers
    gen = torch.Generator().manual_seed(3)
    items = [_item(3.0, gen), _item(3.0, gen), _item(3.0, gen)]
    whole = encode_audios(encoder, projector, items)
    one_clip_each = encode_audios(encoder, projector, items, max_frames=300)  # 3 s = 300 frames
    for a, b in zip(one_clip_each, whole, strict=True):
        assert rel_err(a, b) < 1e-5


def test_missing_clip_samples_is_an_error(towers):
    _, encoder, projector = towers
    item = AudioItem([torch.zeros(301, MEL)], num_samples=48000)
    with pytest.raises(ValueError, match="clip_samples"):
        encode_audio(encoder, projector, item)


def test_parameter_names_are_checkpoint_keys():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AudioEncoder(AudioConfig()).state_dict().items()}
        proj = {k: tuple(v.shape) for k, v in SoundProjector(1024, 4096, 2688).state_dict().items()}
    sub = sorted({k.split(".")[2] for k in shapes if k.startswith("subsampling.layers.")})
    assert sub == ["0", "2", "3", "5", "6"]
    assert shapes["subsampling.layers.0.weight"] == (256, 1, 3, 3)
    assert shapes["subsampling.linear.weight"] == (1024, 4096)
    layer = "layers.23."
    assert shapes[layer + "self_attn.bias_u"] == (8, 128)
    assert shapes[layer + "self_attn.relative_k_proj.weight"] == (1024, 1024)
    assert shapes[layer + "conv.pointwise_conv1.weight"] == (2048, 1024, 1)
    assert shapes[layer + "conv.depthwise_conv.weight"] == (1024, 1, 9)
    assert shapes[layer + "conv.norm.running_var"] == (1024,)
    assert shapes[layer + "feed_forward2.linear1.weight"] == (4096, 1024)
    assert shapes[layer + "norm_out.bias"] == (1024,)
    assert proj == {
        "norm.weight": (1024,),
        "linear1.weight": (4096, 1024),
        "linear2.weight": (2688, 4096),
    }
