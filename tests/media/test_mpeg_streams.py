"""MPEG transport streams (`.ts`, `.m2ts`: H.264 + AAC, as camcorders, broadcast and HLS
segments write them) and program streams (`.mpg`, `.vob`: interlaced MPEG-2 576i + MP2, as
DVDs hold them) are sniffed from their bytes and decoded frame-exact with their soundtrack;
a playlist naming `.ts` segments is still refused."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from media.errors import MediaError
from media.limits import MediaLimits
from media.options import MediaOptions
from media.pipeline import process
from media.probe import kind_of
from tests.media.corpus import write_video
from tests.media.test_video import identify

LIMITS = MediaLimits()


def transport_stream(path: str, m2ts: bool = False) -> str:
    """2 s of 64x48 H.264 at 10 fps, a keyframe every 5 frames, stereo AAC at 48 kHz."""
    return write_video(
        path, container="mpegts", codec="libx264", frames=20, fps=10, gop=5,
        audio=[("aac", 48000, 2)], container_options={"mpegts_m2ts_mode": "1"} if m2ts else None,
    )  # fmt: skip


def program_stream(path: str) -> str:
    """0.8 s of 720x576 interlaced MPEG-2 at 25 fps with B-frames, MP2 stereo at 48 kHz."""
    return write_video(
        path, container="mpeg", codec="mpeg2video", width=720, height=576, frames=20, fps=25,
        gop=6, audio=[("mp2", 48000, 2)], options={"flags": "+ilme+ildct", "bf": "2"},
    )  # fmt: skip


@pytest.mark.parametrize("name,m2ts", [("clip.ts", False), ("clip.m2ts", True)])
def test_transport_stream_decodes_frame_exact_with_its_soundtrack(tmp_path, name, m2ts):
    path = transport_stream(str(tmp_path / name), m2ts)
    head = Path(path).read_bytes()[:5]
    assert head[4 if m2ts else 0] == 0x47  # the layout really is 192-byte packets for .m2ts
    assert kind_of(path, LIMITS).demuxer == "mpegts"
    (item,) = process(path, MediaOptions(fps=5))  # every other frame
    assert item.timestamps == pytest.approx([i / 10 for i in range(0, 20, 2)])
    assert identify(item, 64, 48, 20) == list(range(0, 20, 2))
    assert (item.start_s, item.end_s, item.video_s) == pytest.approx((0.0, 2.0, 2.0))
    assert item.audio is not None and item.audio.seconds == pytest.approx(2.0, abs=0.05)
    (audio,) = process(path, MediaOptions(media_type="audio"))
    assert audio.seconds == pytest.approx(2.0, abs=0.1)


def test_interlaced_program_stream_decodes_with_its_soundtrack(tmp_path):
    path = program_stream(str(tmp_path / "dvd.vob"))
    with av.open(path) as c:  # the corpus is what it claims to be
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("mpeg2video", 720, 576)
        assert next(c.decode(stream)).interlaced_frame
    assert kind_of(path, LIMITS).demuxer == "mpeg"
    (item,) = process(path, MediaOptions(fps=5))
    # ffmpeg's duration of a program stream runs from the first to the last frame's time
    # (0.76 s): sampled at 5 fps, frames 0, 6, 12 at 25 fps
    assert item.timestamps == pytest.approx([0.0, 0.24, 0.48])
    assert item.tubelets.shape[-2:] == (576, 720)
    assert identify(item, 720, 576, 20) == [0, 6, 12]
    assert item.audio is not None and item.audio.seconds == pytest.approx(item.end_s, abs=0.05)


def test_sniffing_needs_the_sync_pattern_and_still_refuses_playlists(tmp_path):
    data = Path(transport_stream(str(tmp_path / "a.ts"))).read_bytes()
    broken = tmp_path / "b.ts"  # a sync byte missing at the third packet: not a stream
    broken.write_bytes(data[:376] + b"\x00" + data[377:])
    text = tmp_path / "c.ts"  # starts with "G" like a sync byte
    text.write_bytes(b"G" + b"ood morning, this is not a video.\n" * 40)
    playlist = tmp_path / "index.ts"
    playlist.write_bytes(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n#EXT-X-ENDLIST\n")
    for path, why in [(broken, "not recognised"), (text, "not recognised"), (playlist, "playlist")]:
        with pytest.raises(MediaError) as err:
            process(str(path), MediaOptions())
        assert err.value.code == "media_unsupported" and why in err.value.message
