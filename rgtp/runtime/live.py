"""Live sources: a camera, an RTSP (or other network) stream, a pipe. FFmpeg (PyAV) decodes
them at the source's pace, whatever the pace of the pipeline.

The policy when the pipeline falls behind: drop frames, never queue without bound. A reader
thread decodes every frame the source sends into a queue of at most `max_queue` frames; a
frame arriving at a full queue pushes out the oldest waiting one, which is dropped and
counted. The pipeline takes the oldest frame still waiting, so with the default
`max_queue=1` it always runs on the newest frame, and at most `max_queue` decoded frames wait
however far behind it falls. A larger queue rides out short stalls (a slow reset step)
without dropping, at up to `max_queue` frames of extra latency.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgtp.runtime.video import VideoError, _reason, load_av


@dataclass
class LiveCounts:
    """What happened to a live source's frames: `read` from the source, `dropped` (pushed
    out of the full queue unseen), `delivered` to the pipeline, and `high_water`, the most
    frames that ever waited at once (never above `max_queue`)."""

    max_queue: int
    read: int = 0
    dropped: int = 0
    delivered: int = 0
    high_water: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "max_queue": self.max_queue,
            "read": self.read,
            "dropped": self.dropped,
            "delivered": self.delivered,
            "high_water": self.high_water,
        }


class DropOldestQueue:
    """A queue of at most `max_queue` items between one producer and one consumer; `put`
    never blocks: on a full queue it drops the oldest item. Counts in `counts`."""

    _END = object()

    def __init__(self, max_queue: int) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self.counts = LiveCounts(max_queue)

    def put(self, item: Any) -> None:
        with self._cond:
            self.counts.read += 1
            if len(self._items) == self.counts.max_queue:
                self._items.popleft()
                self.counts.dropped += 1
            self._items.append(item)
            self.counts.high_water = max(self.counts.high_water, len(self._items))
            self._cond.notify()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; `get` returns the waiting ones, then raises `error` if any (the
        producer's), else StopIteration."""
        with self._cond:
            self._closed, self._error = True, error
            self._cond.notify_all()

    def get(self) -> Any:
        """The oldest waiting item, waiting for one; StopIteration once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed)
            if self._items:
                self.counts.delivered += 1
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            raise StopIteration

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class LiveFrames:
    """Frames of a source that runs at its own pace, handed to a slower consumer by the
    drop-oldest policy (module docstring): a reader thread drains `source` into a
    `DropOldestQueue` of `max_queue` frames while the consumer iterates. Iterate once; it
    ends when the source does (after the waiting frames) or after `max_frames` frames, and
    raises the source's error, if any, after the frames read before it.

    source: RGB frames (H, W, 3) uint8, produced at the source's pace (`open_live` decodes a
    URL, device or pipe); counts: `LiveCounts`, live while the run goes on.
    """

    def __init__(
        self, source: Iterable[np.ndarray], max_queue: int = 1, max_frames: int | None = None
    ) -> None:
        self._queue = DropOldestQueue(max_queue)
        self._source = source
        self._stop = threading.Event()
        self.max_frames = max_frames
        self._thread = threading.Thread(target=self._read, name="rgtp-live-reader", daemon=True)
        self._started = False

    @property
    def counts(self) -> LiveCounts:
        return self._queue.counts

    @property
    def waiting(self) -> int:
        """Frames waiting for the consumer now (at most `counts.max_queue`)."""
        return len(self._queue)

    def _read(self) -> None:
        frames = iter(self._source)
        try:
            for frame in frames:
                if self._stop.is_set():
                    break
                self._queue.put(frame)
        except BaseException as e:  # handed to the consumer, which raises it
            self._queue.close(e)
        else:
            self._queue.close()
        finally:
            close = getattr(frames, "close", None)  # a generator's: closes the source now
            if close is not None:
                close()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._started:
            raise RuntimeError("a live source is read once; open it again to read it again")
        self._started = True
        self._thread.start()
        try:
            while self.max_frames is None or self.counts.delivered < self.max_frames:
                try:
                    frame = self._queue.get()
                except StopIteration:
                    return
                yield frame
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading (the reader ends after the frame it is decoding)."""
        self._stop.set()

    def __enter__(self) -> LiveFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_live(
    url: str,
    max_queue: int = 1,
    max_frames: int | None = None,
    input_format: str | None = None,
    options: Mapping[str, str] | None = None,
    timeout: float | None = 10.0,
) -> LiveFrames:
    """A live source through FFmpeg: an RTSP/HTTP/UDP URL, a camera device (/dev/video0 with
    input_format "v4l2"), a named pipe. It is opened here, so a source that cannot be
    reached fails now (VideoError); then its frames (H, W, 3) uint8 RGB come through
    `LiveFrames` with the drop-oldest policy.

    input_format: FFmpeg's demuxer (its -f), where it cannot tell from the name; options:
    FFmpeg's demuxer options (e.g. {"rtsp_transport": "tcp"}); timeout: seconds to wait for
    the source to open and for each read (None: forever).
    """
    av = load_av()
    try:
        container = av.open(url, format=input_format, options=dict(options or {}), timeout=timeout)
    except av.error.FFmpegError as e:
        raise VideoError(f"{url}: cannot open the live source ({_reason(e)})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{url}: has no video stream")
    return LiveFrames(_decoded(container, url), max_queue, max_frames)


def _decoded(container: Any, url: str) -> Iterator[np.ndarray]:
    """Every frame of the container's first video stream as RGB; closes it at the end."""
    av = load_av()
    count = 0
    with container:
        try:
            for frame in container.decode(container.streams.video[0]):
                count += 1
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoError(f"{url}: cannot read past frame {count} ({_reason(e)})") from e
