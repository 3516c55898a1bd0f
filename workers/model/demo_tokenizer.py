"""The demo checkpoint's tokenizer files and chat template (docs/model.md §5.1, §5.2).

A byte-level BPE trained on a little fixed text, so any input string round-trips. The
special tokens sit at the ids of docs/model.md §5.1; where the spec leaves an id open we choose one
(documented in SPECIAL_TOKENS) and the model code never hard-codes it: it asks the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

NUM_RESERVED = 32  # ids 0..31 are special, like the real tokenizer's low range
SPECIAL_TOKENS = {
    0: "<unk>",  # also the pad token (pad id 0)
    1: "<s>",  # bos
    2: "</s>",
    10: "<|im_start|>",
    11: "<|im_end|>",  # eos
    12: "<think>",
    13: "</think>",
    18: "<image>",  # img_context_token_id
    19: "<img>",
    20: "</img>",
    27: "<so_embedding>",  # sound_context_token_id
    28: "<so_start>",
    29: "<so_end>",
}

# ChatML-like, docs/model.md §5.2: a system turn always; media placeholders before the user text
# (skipped for a modality whose placeholder the text already has); /think and /no_think
# toggle reasoning and are stripped; past assistant turns lose their reasoning.
CHAT_TEMPLATE = r"""
{%- set ns = namespace(think=(enable_thinking if enable_thinking is defined else true)) -%}
{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}{%- else -%}
{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro clean(t) -%}
{{ t | replace('/no_think', '') | replace('/think', '') | trim }}
{%- endmacro -%}
{%- for m in messages if m.role in ('system', 'user') -%}
{%- set t = text_of(m.content) -%}
{%- if '/no_think' in t -%}{%- set ns.think = false -%}
{%- elif '/think' in t -%}{%- set ns.think = true -%}{%- endif -%}
{%- endfor -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set system_text = clean(text_of(messages[0].content)) -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system_text = '' -%}
{%- set turns = messages -%}
{%- endif -%}
<|im_start|>system
{{ system_text }}<|im_end|>
{% for m in turns -%}
{%- if m.role == 'user' -%}
{%- set t = clean(text_of(m.content)) -%}
{%- set parts = [] if m.content is string else m.content -%}
{%- set images = parts | selectattr('type', 'equalto', 'image') | list -%}
{%- set videos = parts | selectattr('type', 'equalto', 'video') | list -%}
{%- set audios = parts | selectattr('type', 'equalto', 'audio') | list -%}
<|im_start|>user
{% if images and '<image>' not in t -%}
{%- if images | length == 1 -%}{{ '<image>\n' }}
{%- else -%}
{%- for i in images -%}
{{ '<image %d><image>' % loop.index }}{{ ' ' if not loop.last }}
{%- endfor -%}
{{ '\n' }}
{%- endif -%}
{%- endif -%}
{%- if videos and '<video>' not in t -%}
{%- for v in videos %}{{ '<video>\n' }}{% endfor -%}
{%- endif -%}
{%- if audios and '<so_embedding>' not in t -%}
{%- for a in audios %}{{ '<so_embedding>\n' }}{% endfor -%}
{%- endif -%}
{{ t }}<|im_end|>
{% elif m.role == 'assistant' -%}
{%- set t = text_of(m.content) -%}
{%- if '</think>' in t %}{% set t = t.split('</think>')[-1] | trim %}{% endif -%}
<|im_start|>assistant
{{ t }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{%- if ns.think %}<|im_start|>assistant
<think>
{% else %}<|im_start|>assistant
<think></think>{% endif -%}
{%- endif -%}
""".strip()

_CORPUS_TEXT = (
    "the a an of to and in is it that for on with as was at by this from be are or not "
    "video audio image page document frame sampled seconds describe summarize transcribe "
    "extract caption question answer text speech music person people scene shows there "
    "what which who when where why how one two three four five six seven eight nine zero "
    "red green blue black white small large left right top bottom first last next before "
    "after during while speaker says said table chart figure title line number value"
)


def _corpus(seed: int) -> list[str]:
    """A fixed pseudo-random text so BPE training is deterministic and covers prompt words."""
    state = seed * 2654435761 % 2**32 or 1
    vocab = _CORPUS_TEXT.split()
    lines = []
    for _ in range(400):
        words = []
        for _ in range(12):
            state = (state * 1103515245 + 12345) % 2**31
            words.append(vocab[state % len(vocab)])
        lines.append(" ".join(words).capitalize() + ".")
    lines += [
        f"Frame {i} sampled at {i * 0.5:.2f} seconds and frame {i + 1} sampled at {i:.2f} seconds: "
        for i in range(1, 40, 2)
    ]
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0) -> Tokenizer:
    specials = [SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>") for i in range(NUM_RESERVED)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    for i, s in SPECIAL_TOKENS.items():
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s} landed at {tok.token_to_id(s)}, not {i}")
    return tok


def write_tokenizer_files(out: Path, vocab_size: int, seed: int = 0) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja."""
    tok = build_tokenizer(vocab_size, seed)
    tok.save(str(out / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<unk>"}
    specials["unk_token"] = "<unk>"
    added = {
        str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False}
        for i, s in SPECIAL_TOKENS.items()
    }
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 262144,
        "add_bos_token": False,
        "added_tokens_decoder": added,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
