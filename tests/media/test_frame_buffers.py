"""FrameBuffers: a pool worker reuses a frame buffer only once it was handed back."""

from __future__ import annotations

from media import frame_buffers
from media.frame_buffers import FrameBuffers


def _ptr(t) -> int:
    return t.untyped_storage().data_ptr()


def test_a_returned_buffer_of_the_same_size_is_reused():
    fb = FrameBuffers(owner=3)
    a, id_a = fb.new((2, 4, 5, 3))
    fb.sent()
    b, _ = fb.new((2, 4, 5, 3))  # `a` is still lent: a new buffer
    assert id_a[0] == 3 and _ptr(b) != _ptr(a) and fb.reused == 0
    fb.sent()
    fb.returned([id_a[1]])
    other, _ = fb.new((2, 4, 6, 3))  # another size: a new buffer
    same, id_same = fb.new((2, 4, 5, 3))
    assert _ptr(other) != _ptr(a) and _ptr(same) == _ptr(a) and fb.reused == 1
    assert same.is_shared() and id_same != id_a


def test_a_failed_job_frees_its_buffers_and_unknown_ids_are_ignored():
    fb = FrameBuffers(owner=0)
    a, _ = fb.new((60,))
    fb.failed()
    fb.returned([99])
    b, _ = fb.new((60,))
    assert _ptr(b) == _ptr(a) and fb.reused == 1


def test_the_oldest_lent_buffers_are_forgotten_and_free_ones_capped():
    fb = FrameBuffers(owner=0, keep_bytes=100, lent_bytes=130)
    ids = []
    for _ in range(3):
        _, i = fb.new((60,))
        fb.sent()
        ids.append(i[1])
    fb.returned(ids)  # the first was forgotten (3 × 60 > 130): only two come back ...
    fb.new((60,))
    fb.new((60,))
    assert fb.reused == 1  # ... and one of them was dropped (2 × 60 > 100 kept)


def test_a_pools_free_buffers_share_a_quarter_of_shm(monkeypatch):
    """Each worker keeps KEEP_BYTES of free buffers unless all of them together would pass a
    quarter of /dev/shm (here: this machine's, then a 32 GB one seen by 128 workers)."""
    shm = frame_buffers.shm_bytes()
    if shm is not None:
        assert frame_buffers.keep_bytes(1) == min(frame_buffers.KEEP_BYTES, shm // 4)
    monkeypatch.setattr(frame_buffers, "shm_bytes", lambda: 32 * 10**9)
    assert frame_buffers.keep_bytes(8) == frame_buffers.KEEP_BYTES
    assert frame_buffers.keep_bytes(128) == 32 * 10**9 // 4 // 128
    assert 128 * frame_buffers.keep_bytes(128) <= 8 * 10**9
    monkeypatch.setattr(frame_buffers, "shm_bytes", lambda: None)  # no /dev/shm
    assert frame_buffers.keep_bytes(128) == frame_buffers.KEEP_BYTES
