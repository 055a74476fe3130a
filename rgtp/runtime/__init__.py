"""The embeddable runtime: a pipeline of engines and per-video streams."""

from rgtp.runtime.pipeline import Pipeline
from rgtp.runtime.stream import FrameResult, Stream, StreamOptions

__all__ = ["FrameResult", "Pipeline", "Stream", "StreamOptions"]
