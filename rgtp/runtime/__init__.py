"""The embeddable runtime: a pipeline of engines and per-video streams."""

from rgtp.families.classification.family import ClassResult
from rgtp.families.detection.family import FrameResult, HeadOutputError
from rgtp.package.family import StepResult
from rgtp.runtime.frames import FrameError
from rgtp.runtime.many import StepManyError
from rgtp.runtime.pipeline import Pipeline
from rgtp.runtime.stream import (
    EngineOutputError,
    Stream,
    StreamBusyError,
    StreamOptions,
)

__all__ = [
    "ClassResult",
    "EngineOutputError",
    "FrameError",
    "FrameResult",
    "HeadOutputError",
    "Pipeline",
    "StepManyError",
    "StepResult",
    "Stream",
    "StreamBusyError",
    "StreamOptions",
]
