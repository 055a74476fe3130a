"""Video files in and out, through PyAV (FFmpeg): imported when a video is opened, so that
running a package on frames of one's own needs no FFmpeg."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

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
        av = load_av()
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


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 10) -> int:
    """Encode RGB frames (H, W, 3) uint8 as H.264 (MP4, or MPEG-TS for a .ts path); returns
    the number of frames."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.count


class VideoWriter:
    """RGB frames (H, W, 3) uint8 encoded as H.264 one at a time, as they are made (MP4, or
    MPEG-TS for a .ts path), at `fps` frames a second; the size is the first frame's, cut to
    even sides. A context manager: leaving it flushes the encoder and closes the file."""

    def __init__(self, path: str | Path, fps: float = 10) -> None:
        self._av = load_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = Fraction(fps).limit_denominator(1001)  # 29.97 as 30000/1001
        if self.rate <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.count = 0
        self._container = self._av.open(str(self.path), mode="w")
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        if self._stream is None:
            h, w = frame.shape[:2]
            stream = self._container.add_stream("libx264", rate=self.rate)
            stream.width, stream.height = w - w % 2, h - h % 2  # yuv420p needs even sides
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "20"}
            self._stream = stream
        s = self._stream
        img = np.ascontiguousarray(frame[: s.height, : s.width])
        self._container.mux(s.encode(self._av.VideoFrame.from_ndarray(img, format="rgb24")))
        self.count += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame_rate(path: str | Path) -> float | None:
    """Frames a second of a video file's first video stream, as its container says; None
    when it says nothing."""
    av = load_av()
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            rate = streams[0].average_rate if streams else None
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({_reason(e)})") from e
    return float(rate) if rate else None


def load_av() -> ModuleType:
    """PyAV, or an ImportError naming the extra that installs it."""
    try:
        import av
    except ImportError as e:
        raise ImportError(
            "rgtp's video input and output need PyAV (FFmpeg): pip install 'rgtp[video]'"
        ) from e
    return av


def _reason(error: av.error.FFmpegError) -> str:
    """FFmpeg's own words for an error, without PyAV's errno and call site."""
    return getattr(error, "strerror", None) or str(error)
