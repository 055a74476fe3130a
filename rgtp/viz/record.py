"""The pictures of a run, written as it goes: the importance-overlay video, every n-th
picture as PNG and, at the end, the K/latency timeline. `rgtp demo` (every family's) and
`rgtp run --overlay` write them through this one path; what a step's picture shows besides
the tokens is the family's (`rgtp.viz.describe`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rgtp.package.family import StepResult
from rgtp.runtime.video import VideoWriter
from rgtp.viz.overlay import overlay
from rgtp.viz.timeline import plot_timeline


@dataclass
class OverlayFiles:
    """What an `OverlayWriter` wrote: the video, its `pictures` count, the PNG frames (in
    `frames`) and the timeline plot (None until `finish`)."""

    video: Path
    frames: Path
    pictures: int = 0
    pngs: list[Path] = field(default_factory=list)
    timeline: Path | None = None


class OverlayWriter:
    """One overlay picture (H, 2W, 3) per step result (`rgtp.viz.overlay.overlay`), encoded
    into `video` at `fps` pictures a second as the steps come, every `png_every`-th picture
    (the first included) also saved as PNG into `frames` (00000.png, 00001.png, ...); then
    `finish` plots the timeline. Only the picture being drawn is held, so a long or live run
    costs no memory for its pictures.

    grid: the encoder's token grid side; class_names: a detector's label names; resize: the
    stream's resize policy (where the tokens lie on a frame that is not square).
    """

    def __init__(
        self,
        video: str | Path,
        frames: str | Path,
        grid: int,
        class_names: Sequence[str] = (),
        fps: float = 8.0,
        png_every: int = 8,
        resize: str = "letterbox",
    ) -> None:
        if png_every < 1:
            raise ValueError(f"png_every must be at least 1, got {png_every}")
        self.files = OverlayFiles(Path(video), Path(frames))
        self.grid, self.class_names = grid, tuple(class_names)
        self.png_every, self.resize = png_every, resize
        self._video = VideoWriter(self.files.video, fps)
        self.files.frames.mkdir(parents=True, exist_ok=True)

    def add(self, frame: np.ndarray, result: StepResult | None) -> None:
        """The picture of `result`, the step `frame` (H, W, 3) uint8 ended; None (a frame
        that only filled a classifier's time step) gives no picture."""
        if result is None:
            return
        picture = overlay(frame, result, self.grid, self.class_names, resize=self.resize)
        self._video.write(picture)
        if self.files.pictures % self.png_every == 0:
            path = self.files.frames / f"{len(self.files.pngs):05d}.png"
            Image.fromarray(picture).save(path)
            self.files.pngs.append(path)
        self.files.pictures += 1

    def close(self) -> None:
        """Flush and close the video (what `finish` does first; safe to call twice)."""
        self._video.close()

    def finish(
        self, runs: Mapping[str, Sequence[StepResult | None]], timeline: str | Path
    ) -> OverlayFiles:
        """Close the video and plot `runs` (name -> a run's step results, e.g. dense and
        pruned) into `timeline` (PNG); what was written."""
        self.close()
        self.files.timeline = plot_timeline(runs, timeline)
        return self.files

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordingStream:
    """A stream whose every step is also drawn by `writer`: `step(frame)` runs the stream's
    and hands the frame and its result to `writer.add`; `finish` plots the run's timeline
    into `timeline`. Anything else is the stream's."""

    def __init__(self, stream: Any, writer: OverlayWriter, timeline: str | Path) -> None:
        self.stream, self.writer, self.timeline = stream, writer, Path(timeline)

    def finish(self, results: Sequence[StepResult | None], name: str = "run") -> OverlayFiles:
        """Close the video and plot `results` (the run's, one per frame) as `name`."""
        return self.writer.finish({name: results}, self.timeline)

    def step(self, frame: np.ndarray) -> StepResult | None:
        result = self.stream.step(frame)
        self.writer.add(np.asarray(frame), result)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def record_run(
    stream: Any, out: str | Path, class_names: Sequence[str] = (), fps: float | None = None
) -> RecordingStream:
    """`stream` drawing its steps into `out` as `rgtp run --overlay` writes them: overlay.mp4
    (a picture per step, at the source's `fps` over the frames a step takes; 25 frames a
    second where the source says none), every 10th picture in overlay_frames/ (not every
    8th: that would be the reset frames of the default schedule, all dense), and, from
    `RecordingStream.finish`, timeline.png."""
    out = Path(out)
    per_step = stream.state.task.frames_per_step  # a classifier's tubelet: one picture each
    writer = OverlayWriter(
        out / "overlay.mp4",
        out / "overlay_frames",
        stream.plan.encoder.grid,
        class_names,
        fps=(fps or 25.0) / per_step,
        png_every=10,
        resize=stream.options.resize,
    )
    return RecordingStream(stream, writer, out / "timeline.png")
