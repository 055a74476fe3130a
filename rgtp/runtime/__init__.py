"""The embeddable runtime: a pipeline of engines and per-video streams."""

from rgtp.runtime.frames import FrameError
from rgtp.runtime.pipeline import Pipeline
from rgtp.runtime.stream import (
    EngineOutputError,
    FrameResult,
    Stream,
    StreamBusyError,
    StreamOptions,
)

__all__ = [
    "EngineOutputError",
    "FrameError",
    "FrameResult",
    "Pipeline",
    "Stream",
    "StreamBusyError",
    "StreamOptions",
]
