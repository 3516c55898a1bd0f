"""Edits of a sharded safetensors checkpoint written for a test (the loader's bad inputs)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file


def rewrite_tensor(path, name: str, tensor: torch.Tensor | None) -> str:
    """Replace (or, with None, drop) one tensor in its shard, keeping the index consistent;
    returns the shard's file name."""
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"][name]
    tensors = load_file(path / shard)
    if tensor is None:
        del tensors[name], index["weight_map"][name]
    else:
        tensors[name] = tensor
    save_file(tensors, path / shard)
    index_file.write_text(json.dumps(index))
    return shard
