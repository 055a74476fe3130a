"""The embeddable runtime: a pipeline of engines and per-video streams."""

from rgtp.package.family import StepResult
from rgtp.runtime.frames import FrameError
from rgtp.runtime.many import StepManyError
from rgtp.runtime.options import StreamOptions
from rgtp.runtime.outputs import EngineOutputError
from rgtp.runtime.pipeline import Pipeline
from rgtp.runtime.stream import Stream, StreamBusyError

__all__ = [
    "EngineOutputError",
    "FrameError",
    "Pipeline",
    "StepManyError",
    "StepResult",
    "Stream",
    "StreamBusyError",
    "StreamOptions",
]
