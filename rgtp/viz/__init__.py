"""Visualisation: importance overlays (PNG, MP4) and K/latency timelines, for every model
family. What a step's picture shows besides the tokens (a detector's boxes, a classifier's
class) is the family's to say: its step result's `marks` (`describe` asks it)."""

from __future__ import annotations

from collections.abc import Sequence

from rgtp._optional import require
from rgtp.package.family import Box, StepMarks, StepResult

# Every drawing module (imported after this package) draws with these: a missing one is
# named with its extra here, not as a bare ModuleNotFoundError from inside them.
require("matplotlib", "viz")
require("PIL", "viz")

__all__ = ["Box", "StepMarks", "describe"]


def describe(
    result: StepResult, class_names: Sequence[str] = (), score_threshold: float = 0.3
) -> StepMarks:
    """A step result -> its marks (`result.marks`). `class_names` names a detector's labels
    (a classifier's result carries its own); boxes scoring below `score_threshold` are left
    out."""
    marks = getattr(result, "marks", None)
    if marks is None:
        raise TypeError(
            f"rgtp.viz cannot draw a {type(result).__name__}; it draws a detector's "
            "FrameResult, a classifier's ClassResult, and any family's step result that says "
            "what its picture shows with marks(class_names, score_threshold) -> StepMarks "
            "(rgtp.package.family)"
        )
    return marks(class_names, score_threshold)
