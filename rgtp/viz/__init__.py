"""Visualisation: importance overlays (PNG, MP4) and K/latency timelines, for every model
family. `describe` is the one place that knows what each family's step result shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import singledispatch

from rgtp.families.classification.family import ClassResult
from rgtp.families.detection.family import FrameResult
from rgtp.package.family import StepResult

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the frame's pixels


@dataclass(frozen=True)
class StepMarks:
    """What a picture of one step says besides the kept tokens and the importance.

    unit: what one step is ("frame", "time step"); boxes: (box, text, colour index) drawn on
    the frame; caption: one line about the whole frame (a classifier's top class), or None;
    caption_color: its colour index (None: white, no class).
    """

    unit: str
    boxes: list[tuple[Box, str, int]] = field(default_factory=list)
    caption: str | None = None
    caption_color: int | None = None


@singledispatch
def describe(
    result: StepResult, class_names: Sequence[str] = (), score_threshold: float = 0.3
) -> StepMarks:
    """A step result -> its marks. `class_names` names a detector's labels (a classifier's
    result carries its own); boxes scoring below `score_threshold` are left out."""
    raise TypeError(
        f"rgtp.viz cannot draw a {type(result).__name__}; it draws a detector's FrameResult "
        "and a classifier's ClassResult (register others with rgtp.viz.describe.register)"
    )


@describe.register
def _frame_marks(
    result: FrameResult, class_names: Sequence[str] = (), score_threshold: float = 0.3
) -> StepMarks:
    dets = result.detections
    boxes = []
    for box, score, label in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
    ):
        if score >= score_threshold:
            name = class_names[label] if label < len(class_names) else str(label)
            boxes.append((tuple(box), f"{name} {score:.2f}", label))
    return StepMarks("frame", boxes=boxes)


@describe.register
def _class_marks(
    result: ClassResult, class_names: Sequence[str] = (), score_threshold: float = 0.3
) -> StepMarks:
    # The scores are the clip's (the last s time steps); none before the first full clip.
    top = result.top
    caption = "—" if top is None else f"{top[0]} {top[1]:.2f}"
    return StepMarks("time step", caption=caption, caption_color=result.label)
