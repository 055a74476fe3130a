"""Video files in and out, through PyAV (FFmpeg)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# MPEG transport streams are whole packets of 188 bytes (192 in M2TS/Blu-ray files).
TS_PACKET_SIZES = (188, 192)


class VideoError(ValueError):
    """A video file that cannot be opened, read or decoded; names the file and the frame."""


class VideoWarning(UserWarning):
    """A video file that looks truncated: it ended before the frames it should hold."""


class VideoReader:
    """Decoded RGB frames (H, W, 3) uint8 of a file's first video stream, in order.

    Frame positions count every frame of the video from 0, decoded or not. A frame that
    cannot be decoded raises VideoError naming the file and its position, or, with
    `skip_bad_frames`, is skipped and its position appended to `skipped`. A file that ends
    before the frames its container promises, or inside a transport-stream packet, gives a
    VideoWarning: its last frames are lost.
    """

    def __init__(
        self, path: str | Path, max_frames: int | None = None, skip_bad_frames: bool = False
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        self.max_frames = max_frames
        self.skip_bad_frames = skip_bad_frames
        self.skipped: list[int] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        self.skipped.clear()
        try:
            container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: not a readable video ({_reason(e)})") from e
        with container:
            if not container.streams.video:
                raise VideoError(f"{self.path}: has no video stream")
            stream = container.streams.video[0]
            position, yielded = 0, 0
            packets = container.demux(stream)
            while yielded != self.max_frames:
                try:
                    packet = next(packets, None)
                except av.error.FFmpegError as e:
                    raise VideoError(
                        f"{self.path}: cannot read past frame {position} ({_reason(e)})"
                    ) from e
                if packet is None:
                    self._warn_if_truncated(container.format.name, stream.frames, position)
                    return
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as e:
                    if not self.skip_bad_frames:
                        raise VideoError(
                            f"{self.path}: cannot decode frame {position} ({_reason(e)}); "
                            "--skip-bad-frames (skip_bad_frames=True) skips such frames"
                        ) from e
                    self.skipped.append(position)
                    position += 1
                    continue
                for frame in decoded:
                    if yielded == self.max_frames:
                        return
                    position += 1
                    yielded += 1
                    yield frame.to_ndarray(format="rgb24")

    def _warn_if_truncated(self, container_format: str, promised: int, position: int) -> None:
        size = self.path.stat().st_size
        if promised and position < promised:
            warnings.warn(
                f"{self.path}: ended after {position} of the {promised} frames its header "
                "promises; the file looks truncated",
                VideoWarning,
                stacklevel=3,
            )
        elif "mpegts" in container_format.split(",") and all(size % p for p in TS_PACKET_SIZES):
            warnings.warn(
                f"{self.path}: ends inside a transport-stream packet ({size} bytes is not a "
                f"whole number of {TS_PACKET_SIZES[0]}-byte packets); the file looks truncated "
                f"and the frames after frame {position - 1} are lost",
                VideoWarning,
                stacklevel=3,
            )


def read_frames(path: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decoded RGB frames (H, W, 3) uint8 of the first video stream (see VideoReader)."""
    yield from VideoReader(path, max_frames)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 10) -> int:
    """Encode RGB frames (H, W, 3) uint8 as H.264 (MP4, or MPEG-TS for a .ts path); returns
    the number of frames."""
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


def _reason(error: av.error.FFmpegError) -> str:
    """FFmpeg's own words for an error, without PyAV's errno and call site."""
    return getattr(error, "strerror", None) or str(error)
