"""A worker of GPU N sees GPU N alone, as cuda:0 (workers/worker.py `claim_gpu`)."""

from __future__ import annotations

import pytest

from workers.worker import claim_gpu


@pytest.mark.parametrize(
    ("device", "visible", "expect", "now_visible"),
    [
        ("cuda:3", None, "cuda:0", "3"),
        ("cuda:0", None, "cuda:0", "0"),
        ("cuda:1", "4,6", "cuda:0", "6"),  # an index into what the process was given
        ("cuda:1", "GPU-aa, GPU-bb", "cuda:0", "GPU-bb"),
        ("cpu", None, "cpu", None),
        ("cuda", "2", "cuda", "2"),  # the current device: left as it is
    ],
)
def test_claim_gpu(device, visible, expect, now_visible):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert claim_gpu(device, env) == expect
    assert env.get("CUDA_VISIBLE_DEVICES") == now_visible


def test_claim_gpu_past_the_visible_ones():
    env = {"CUDA_VISIBLE_DEVICES": "4,6"}
    with pytest.raises(SystemExit, match="cuda:2"):
        claim_gpu("cuda:2", env)
    assert env == {"CUDA_VISIBLE_DEVICES": "4,6"}
