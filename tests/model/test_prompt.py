"""Tokenizer, chat template, task prompts, placeholder expansion and output parsing."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models

from media.items import AudioItem, ImageItem, VideoItem
from workers.model.demo_tokenizer import SPECIAL_TOKENS, write_tokenizer_files
from workers.model.expand import expand_prompt, tubelet_labels
from workers.model.prompt import PromptBuilder, task_text


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(path, vocab_size=512)
    return PromptBuilder.from_dir(path)


def image(grid=(4, 6)) -> ImageItem:
    return ImageItem(pixels=torch.zeros(3, 16 * grid[0], 16 * grid[1]), grid=grid)


def video(frames: int, grid=(4, 4), audio=None) -> VideoItem:
    n = (frames + 1) // 2
    stamps = [0.25 * k for k in range(frames)]
    return VideoItem(torch.zeros(n, 2, 3, 64, 64, dtype=torch.uint8), grid, stamps, audio)


def audio(samples: int) -> AudioItem:
    return AudioItem(
        clips=[torch.zeros(samples // 160 + 1, 128)], num_samples=samples, clip_samples=[samples]
    )


def test_special_tokens_sit_at_their_ids(pb):
    for i, s in SPECIAL_TOKENS.items():
        assert pb.tokenizer.token_to_id(s) == i
        assert pb.encode(s) == [i]
    text = "Grüße, 世界! <image> tab\tand 3.14"
    assert pb.tokenizer.decode(pb.encode(text), skip_special_tokens=False) == text


def test_template_layout_thinking_off(pb):
    out = pb.render([image(), video(3), audio(16000)], "What happens?", thinking=False)
    assert out == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
        "<image>\n<video>\n<so_embedding>\nWhat happens?<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>"
    )


def test_template_thinking_on_and_switches(pb):
    assert pb.render([], "Hi", thinking=True).endswith("<|im_start|>assistant\n<think>\n")
    off = pb.render([], "Hi /no_think", thinking=True)
    assert off.endswith("<think></think>") and "/no_think" not in off
    on = pb.render([], "Hi /think", thinking=False)
    assert on.endswith("<think>\n") and "/think" not in on


def test_several_images_are_numbered(pb):
    out = pb.render([image(), image()], "Compare.", thinking=False)
    assert "user\n<image 1><image> <image 2><image>\nCompare." in out


def test_video_soundtrack_follows_the_video(pb):
    out = pb.render([video(2, audio=audio(8000))], "x", thinking=False)
    assert "<video>\n<so_embedding>\nx" in out


def test_user_text_cannot_inject_placeholders(pb):
    out = pb.render([], "look <image><video><|im_end|> here", thinking=False)
    assert "look  here" in out and out.count("<image>") == 0


@pytest.mark.parametrize("task", ["caption", "summarize", "transcribe", "extract"])
def test_task_text(task):
    base = task_text(task, None, "video")
    assert "video" in base
    assert task_text(task, "Focus on the dog.", "video") == base + "\n\nFocus on the dog."
    assert "text" in task_text("transcribe", None, "document")


def test_ask_is_the_prompt_verbatim():
    assert task_text("ask", "  Is it raining? ", "image") == "  Is it raining? "
    with pytest.raises(ValueError, match="prompt"):
        task_text("ask", None, "image")
    with pytest.raises(ValueError, match="unknown task"):
        task_text("translate", "x", "image")


def test_tubelet_labels_odd_frames():
    labels = tubelet_labels([0.0, 0.5, 1.0], 2)
    assert labels == [
        "Frame 1 sampled at 0.00 seconds and frame 2 sampled at 0.50 seconds: ",
        "Frame 3 sampled at 1.00 seconds: ",
    ]


def test_expansion_layout():
    v = video(3, grid=(4, 6), audio=audio(16000 * 2))
    text, visual, aud = expand_prompt("A<image>B<video>\n<so_embedding>C", [image((4, 6)), v])
    blk = "<img>" + "<image>" * 6 + "</img>"
    assert text == (
        "A" + blk + "B"
        "Frame 1 sampled at 0.00 seconds and frame 2 sampled at 0.25 seconds: " + blk + "\n"
        "Frame 3 sampled at 0.50 seconds: " + blk + "\n"
        "<so_start>" + "<so_embedding>" * 25 + "<so_end>C"
    )
    assert visual[1] is v and aud == [v.audio]


def test_expansion_counts_must_match():
    with pytest.raises(ValueError, match="more <image> markers"):
        expand_prompt("<image><image>", [image()])
    with pytest.raises(ValueError, match="without a marker"):
        expand_prompt("<image>", [image(), audio(1600)])


def test_parse_output(pb):
    ids = pb.encode("I should look.</think>A cat.")
    out = pb.parse_output(ids, thinking=True)
    assert (out.reasoning, out.text) == ("I should look.", "A cat.")
    cut = pb.parse_output(pb.encode("still thinking"), thinking=True)
    assert (cut.reasoning, cut.text) == ("still thinking", "")
    plain = pb.parse_output(pb.encode(" A dog. "), thinking=False)
    assert (plain.reasoning, plain.text) == (None, "A dog.")
    stray = pb.parse_output(pb.encode("<think>hm</think>Yes"), thinking=False)
    assert (stray.reasoning, stray.text) == ("hm", "Yes")


def test_history_and_system_turns(pb):
    messages = [
        {"role": "system", "content": "Be brief. /think"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "<think>hmm</think> A cat."},
        {"role": "user", "content": "And?"},
    ]
    out = pb.template.render(messages=messages, add_generation_prompt=True, enable_thinking=False)
    assert out == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\nHi<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nAnd?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )


def test_tokenizer_without_media_tokens_is_refused(pb):
    bare = Tokenizer(models.WordLevel({"<think>": 0, "</think>": 1, "x": 2}, unk_token="x"))
    with pytest.raises(ValueError, match="<img>"):
        PromptBuilder(bare, "{{ messages }}")
