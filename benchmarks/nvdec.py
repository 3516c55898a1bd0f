"""Can this machine decode H.264 on the GPU's video decoder (NVDEC), and at what cost to the host?

    python -m benchmarks.nvdec [--clips 1] [--cache DIR]

W-video's media decode takes ≈ 3 CPU-seconds a clip on the host (RESULTS.md session 20): 256
clips are 48 s of 16 cores, which leaves no room for FP8 W-video at 1.4 × bf16 or at 300
video-h/h. PyAV's wheel bundles an FFmpeg with the `h264_cuvid` decoder and the CUDA hwaccel;
it needs the driver's `libnvcuvid` at run time. Each W-video clip (`benchmarks.media`) is
decoded whole three ways, its wall and this process's CPU seconds printed:
  * software: libavcodec on one thread, as a media pool worker decodes;
  * nvdec: NVDEC, each frame copied back to host memory;
  * nvdec on GPU: NVDEC in torch's own CUDA context (AV_CUDA_USE_PRIMARY_CONTEXT), frames
    left on the GPU and read through DLPack, with the GPU memory that held.
A way that fails prints its error: that is the answer on a machine without NVDEC.
"""

from __future__ import annotations

import argparse
import os
import time

import av
import torch
from av.codec.hwaccel import HWAccel

from benchmarks.media import clips

_PRIMARY_CONTEXT = 1  # AV_CUDA_USE_PRIMARY_CONTEXT: share the context torch made


def decode_whole(path: str, hwaccel: HWAccel | None = None) -> dict:
    """Every frame of `path`'s video stream -> frames, format, wall and CPU seconds; with
    frames left on the GPU (`hwaccel.is_hw_owned`), the last one's planes through DLPack."""
    wall, cpu = time.perf_counter(), time.process_time()
    with av.open(path, hwaccel=hwaccel) as c:
        stream = c.streams.video[0]
        if hwaccel is None:  # one thread, as each pool worker decodes
            stream.codec_context.thread_count, stream.codec_context.thread_type = 1, "SLICE"
        frames, last = 0, None
        for frame in c.decode(stream):
            frames, last = frames + 1, frame
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        row = {"frames": frames, "format": last.format.name, "wall_s": wall, "cpu_s": cpu}
        if hwaccel is not None and hwaccel.is_hw_owned:
            planes = [torch.from_dlpack(p) for p in last.planes]
            row["planes"] = [(tuple(p.shape), str(p.device)) for p in planes]
    return row


def _ways() -> dict[str, HWAccel | None]:
    return {
        "software": None,
        "nvdec": HWAccel("cuda", allow_software_fallback=False),
        "nvdec on GPU": HWAccel(
            "cuda", allow_software_fallback=False, is_hw_owned=True, flags=_PRIMARY_CONTEXT
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), "..", ".cache",
                                                    "media_bench"))  # fmt: skip
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.zeros(1, device="cuda")  # torch's context first: NVDEC then shares it
    print(f"PyAV {av.__version__}; {torch.cuda.get_device_name() if cuda else 'no GPU'}")
    for path in clips(args.cache, args.clips):
        for name, hwaccel in _ways().items():
            used = torch.cuda.mem_get_info() if cuda else None
            try:
                row = decode_whole(path, hwaccel)
            except Exception as e:  # no NVDEC here: the error is the result
                print(f"{name:13} {type(e).__name__}: {e}")
                continue
            if used is not None:
                free, _ = torch.cuda.mem_get_info()
                row["gpu_mib"] = (used[0] - free) / 2**20
            fps = row["frames"] / row["wall_s"]
            print(f"{name:13} {row['frames']} frames ({row['format']}) in {row['wall_s']:.2f} s "
                  f"({fps:.0f} fps), CPU {row['cpu_s']:.2f} s"
                  + (f", GPU +{row['gpu_mib']:.0f} MiB" if "gpu_mib" in row else "")
                  + (f", planes {row['planes']}" if "planes" in row else ""))  # fmt: skip


if __name__ == "__main__":
    main()
