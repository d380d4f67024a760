"""Write evaluation videos: RGB frames to an H.264 mp4 with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# cpu-independent: the same frames give the same bytes on every CPU and whatever the heap holds (x264's AVX-512
# macroblock-tree code reads memory it never wrote; see recap_ray/data/video.py).
OPTIONS = {"crf": "23", "preset": "veryfast", "x264-params": "cpu-independent=1"}


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Encode uint8 frames (N, H, W, 3) as H.264 yuv420p; odd sizes are padded by one pixel."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: frames must be uint8 (N>0, H, W, 3), got {frames.dtype} {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(OPTIONS)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
