"""The embeddable runtime: a pipeline of engines and per-video streams."""

from rgtp.models.families import StepResult
from rgtp.models.families.classification import ClassResult
from rgtp.models.families.detection import FrameResult, HeadOutputError
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
