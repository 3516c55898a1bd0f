"""RADIO tower + pixel shuffle + mlp1 against the transformers 5.24.0 omni reference (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from media.items import ImageItem, VideoItem
from media.resize import video_pixels
from tests.model.parity import TINY_TEXT_CONFIG, rel_err
from workers.model import vision
from workers.model.config import VisionConfig
from workers.model.pixel_shuffle import pixel_shuffle
from workers.model.projectors import VisionProjector
from workers.model.vision import RadioViT, encode_images, encode_video, encode_visual

omni = pytest.importorskip("transformers.models.nemotron_h_omni.modeling_nemotron_h_omni")
omni_cfg = pytest.importorskip("transformers.models.nemotron_h_omni.configuration_nemotron_h_omni")

WIDTH, PATCH, POS_GRID, PROJ_HIDDEN = 64, 16, 16, 80
LLM_WIDTH = TINY_TEXT_CONFIG["hidden_size"]
TINY = VisionConfig(
    hidden_size=WIDTH, num_layers=2, num_heads=4, mlp_size=4 * WIDTH, pos_grid=POS_GRID
)


def _reference():
    cfg = omni_cfg.NemotronH_Omni_Reasoning_V3_Config(
        vision_config=dict(
            model_type="radio",
            hidden_size=WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_img_size=POS_GRID * PATCH,
            num_cls_tokens=4,
            num_registers=6,
            video_temporal_patch_size=2,
        ),
        text_config=TINY_TEXT_CONFIG,
        audio_config=None,
        projector_hidden_size=PROJ_HIDDEN,
        vision_hidden_size=WIDTH,
        image_token_id=18,
    )
    model = omni.NemotronH_Omni_Reasoning_V3(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:  # identity in the real checkpoint
                continue
            noise = torch.randn(p.shape, generator=gen)
            is_norm_weight = "norm" in name.split(".")[-2] and name.endswith("weight")
            p.copy_(1 + 0.1 * noise if is_norm_weight else 0.1 * noise)
    return model


def _ours_from(ref) -> tuple[RadioViT, VisionProjector]:
    sd = ref.state_dict()
    ours = {
        "model.patch_generator.embedder.weight": "embeddings.patch_projection.weight",
        "model.patch_generator.video_embedder.weight": "embeddings.video_patch_projection.weight",
        "model.patch_generator.pos_embed": "embeddings.position_embedding",
        "model.patch_generator.cls_token.token": "embeddings.cls_register_token",
    }
    mapped = {k: sd["vision_model." + v] for k, v in ours.items()}
    for i in range(TINY.num_layers):
        src, dst = f"vision_model.encoder.layer.{i}.", f"model.blocks.{i}."
        assert torch.equal(sd[src + "layer_scale1.lambda1"], torch.ones(WIDTH))
        for part in ("weight", "bias"):
            mapped[dst + f"attn.qkv.{part}"] = torch.cat(
                [sd[src + f"attention.{x}_proj.{part}"] for x in "qkv"]
            )
            mapped[dst + f"attn.proj.{part}"] = sd[src + f"attention.o_proj.{part}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                mapped[dst + f"{name}.{part}"] = sd[src + f"{name}.{part}"]
    vit = RadioViT(TINY).eval()
    vit.load_state_dict(mapped, strict=True)
    mlp1 = VisionProjector(4 * WIDTH, PROJ_HIDDEN, LLM_WIDTH).eval()
    proj = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
    mlp1.load_state_dict(
        {f"{k}.weight": sd[f"multi_modal_projector.{v}.weight"] for k, v in proj.items()},
        strict=True,
    )
    return vit, mlp1


@pytest.fixture(scope="module")
def towers():
    ref = _reference()
    return ref, *_ours_from(ref)


def _image(grid, seed) -> ImageItem:
    gen = torch.Generator().manual_seed(seed)
    return ImageItem(torch.randn(3, PATCH * grid[0], PATCH * grid[1], generator=gen), grid)


def _video(n_tubelets, grid, seed) -> VideoItem:
    """uint8 frames at a decoded size the model must resize (shrink rows, stretch columns)."""
    gen = torch.Generator().manual_seed(seed)
    size = (20 * grid[0] + 3, 12 * grid[1] + 1)
    tubelets = torch.randint(0, 256, (n_tubelets, 2, 3, *size), generator=gen, dtype=torch.uint8)
    return VideoItem(tubelets, grid, timestamps=[0.5 * i for i in range(2 * n_tubelets)])


# 6×10 and 10×6 share a length (one batched forward, different position tables);
# 4×18 is wider than the 16×16 position grid, so its table is upsampled.
GRIDS = [(6, 10), (10, 6), (8, 4), (4, 18)]


@torch.no_grad()
def test_images_match_reference(towers):
    ref, vit, mlp1 = towers
    images = [_image(g, i) for i, g in enumerate(GRIDS)]
    packed = torch.cat(
        [ref.vision_model.embeddings._image_to_patches(im.pixels[None])[0] for im in images]
    )
    expected = ref.get_image_features(packed, torch.tensor(GRIDS)).pooler_output
    got = encode_images(vit, mlp1, images)
    for im, e, g in zip(images, expected, got, strict=True):
        assert g.shape == (im.num_tokens, LLM_WIDTH)
        assert rel_err(g, e) < 1e-4


@torch.no_grad()
def test_video_matches_reference(towers):
    ref, vit, mlp1 = towers
    video = _video(3, (4, 6), seed=7)
    pixels = video_pixels(video.tubelets, video.grid).flatten(1, 2)  # what ours computes itself
    expected = ref.get_video_features(pixels[None]).pooler_output[0]
    got = encode_video(vit, mlp1, video)
    assert got.shape == (3, 2, 3, LLM_WIDTH)
    assert rel_err(got.reshape(-1, LLM_WIDTH), expected) < 1e-4


@torch.no_grad()
def test_mixed_batch_equals_separate_calls(towers):
    _, vit, mlp1 = towers
    # the 4×6 video and a 6×4 image have equal lengths and share a forward with different embedders
    items = [_video(3, (4, 6), seed=7), _image((6, 4), 11), _image((8, 4), 2), _video(2, (2, 2), 5)]
    together = encode_visual(vit, mlp1, items)
    for item, t in zip(items, together, strict=True):
        alone = encode_visual(vit, mlp1, [item])[0]
        assert rel_err(t, alone) < 1e-5


def test_token_cap_splits_forwards_without_changing_results(towers, monkeypatch):
    _, vit, mlp1 = towers
    items = [_video(3, (4, 6), seed=7), _image((6, 4), 11), _image((6, 4), 3)]
    whole = encode_visual(vit, mlp1, items)
    calls = []
    monkeypatch.setattr(vit, "forward", lambda x, f=vit.forward: calls.append(x.shape[0]) or f(x))
    split = encode_visual(vit, mlp1, items, vit_tokens=70)  # two 34-token sequences a forward
    assert calls == [2, 2, 1]  # the video's tubelets split across forwards, an image joins
    for a, b in zip(whole, split, strict=True):
        assert rel_err(b, a) < 1e-5


def test_video_resize_in_slices_gives_the_same_result(towers, monkeypatch):
    _, vit, mlp1 = towers
    video = _video(3, (4, 6), seed=5)
    whole = encode_video(vit, mlp1, video)
    calls = []
    monkeypatch.setattr(
        vision, "video_pixels", lambda x, g, f=video_pixels: calls.append(x.shape[0]) or f(x, g)
    )
    assert torch.equal(encode_visual(vit, mlp1, [video], resize_bytes=1)[0], whole)
    assert calls == [1] * 6  # one frame a slice


@pytest.mark.parametrize("block", [vision.POS_BLOCK_VALUES, 1])
def test_position_embedding_is_the_crop_of_the_resized_table(monkeypatch, block):
    """Only the crop is computed (in blocks of lines: `block` 1 is one line a block), yet it
    is the square bilinear resize's top-left corner, for grids smaller and larger than the
    table, wide and tall."""
    monkeypatch.setattr(vision, "POS_BLOCK_VALUES", block)
    pg = vision.PatchGenerator(TINY)
    with torch.no_grad():
        pg.pos_embed.normal_(generator=torch.Generator().manual_seed(0))
    g = TINY.pos_grid
    table = pg.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    for h, w in [(4, 6), (6, 4), (g, g), (g, 10), (24, 42), (42, 24), (2, 90), (90, 2), (33, 17)]:
        m = max(h, w)
        full = torch.nn.functional.interpolate(table, size=(m, m), mode="bilinear")
        expected = full[0, :, :h, :w].flatten(1).t()
        assert rel_err(pg.position_embedding((h, w)), expected) < 1e-6, (h, w)


def test_pixel_shuffle_channel_order():
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)
    y = pixel_shuffle(x)
    assert y.shape == (2, 2, 3, 12)
    for i, j in [(0, 0), (1, 2), (0, 1)]:
        want = torch.cat([x[:, 2 * i + r, 2 * j + s] for r in (0, 1) for s in (0, 1)], dim=-1)
        assert torch.equal(y[:, i, j], want)


def test_parameter_names_are_checkpoint_keys():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in RadioViT(VisionConfig()).state_dict().items()}
        mlp1 = {
            k: tuple(v.shape) for k, v in VisionProjector(5120, 20480, 2688).state_dict().items()
        }
    pg = "model.patch_generator."
    assert shapes[pg + "embedder.weight"] == (1280, 768)
    assert shapes[pg + "video_embedder.weight"] == (1280, 1536)
    assert shapes[pg + "pos_embed"] == (1, 16384, 1280)
    assert shapes[pg + "cls_token.token"] == (10, 1280)
    assert shapes["model.blocks.31.attn.qkv.weight"] == (3840, 1280)
    assert shapes["model.blocks.31.mlp.fc1.bias"] == (5120,)
    assert len(shapes) == 4 + 32 * 12
    assert mlp1 == {"0.weight": (5120,), "1.weight": (20480, 5120), "3.weight": (2688, 20480)}
