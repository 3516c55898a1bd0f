"""What the parity tests against transformers share: the error measure, and the tiny
NemotronH the omni reference model needs beside the tower under test."""

from __future__ import annotations

import torch

# `text_config` of a reference NemotronH_Omni built only for its vision or audio tower.
TINY_TEXT_CONFIG = dict(
    model_type="nemotron_h",
    vocab_size=64,
    hidden_size=48,
    layers_block_type=["attention"],
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=24,
)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|, for tensors of one shape."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return ((ours - ref).abs().max() / ref.abs().max()).item()
