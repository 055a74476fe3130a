"""Video files in and out, through PyAV (FFmpeg)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def read_frames(path: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decoded RGB frames (H, W, 3) uint8 of the first video stream."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: not a readable video ({e})") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: has no video stream")
        for i, frame in enumerate(container.decode(video=0)):
            if max_frames is not None and i >= max_frames:
                break
            yield frame.to_ndarray(format="rgb24")


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 10) -> int:
    """Encode RGB frames (H, W, 3) uint8 as H.264 MP4; returns the number of frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                h, w = frame.shape[:2]
                stream = container.add_stream("libx264", rate=Fraction(fps))
                stream.width, stream.height = w - w % 2, h - h % 2  # yuv420p needs even sides
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "20"}
            img = np.ascontiguousarray(frame[: stream.height, : stream.width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            count += 1
        if stream is not None:
            container.mux(stream.encode(None))
    return count
