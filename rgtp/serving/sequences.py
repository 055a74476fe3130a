"""One rgtp stream per Triton sequence (correlation ID), over one shared pipeline.

A request with START opens a new stream for its correlation ID (replacing any earlier one of
that ID), END frees it after its frame, and a sequence with no request for `idle_timeout_s`
is freed by `reap`. A request whose frame is refused (no frame, wrong shape or dtype, NaN,
an engine's NaN) gets an error and leaves its stream, and every other, as they were: a step
is a transaction (`rgtp.runtime.stream`).

`StreamTable.execute` is the one place that walks over the requests of a Triton `execute`
call. It steps them one by one; a pipeline that steps many streams in one engine call
would replace that loop and nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rgtp.runtime import Pipeline, Stream
from rgtp.serving.settings import ServingSettings
from rgtp.serving.tensors import request_frame, response_tensors


class SequenceError(ValueError):
    """A request that does not fit its sequence: a correlation ID with no stream and no START,
    or a START when `max_streams` streams are open. The other streams are unchanged."""


@dataclass(frozen=True)
class SequenceRequest:
    """One request as the sequence batcher delivers it: its correlation ID, START and END
    flags, and its input tensors by name (batch dimension first)."""

    correlation_id: int | str
    start: bool
    end: bool
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Open:
    stream: Stream
    last_seen: float  # seconds, on the table's clock


class StreamTable:
    """The streams of the sequences a model instance holds. Thread-safe: `execute` and
    `reap` (e.g. from a timer thread) exclude each other."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: ServingSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline, self.settings, self.clock = pipeline, settings, clock
        self.options = settings.stream_options()
        self._open: dict[int | str, _Open] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def execute(
        self, requests: Sequence[SequenceRequest]
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Each request's output tensors (`rgtp.serving.tensors`), or the error to answer it
        with, in request order. Idle sequences are freed first."""
        with self._lock:
            self._reap(self.clock())
            results: list[dict[str, np.ndarray] | Exception] = []
            for request in requests:
                try:
                    results.append(self._step(request))
                # A server answers every request: an unforeseen error in one frame becomes
                # that request's error response, not the end of every other sequence.
                except Exception as e:
                    results.append(e)
            return results

    def reap(self) -> int:
        """Free the streams of sequences idle for longer than the timeout; how many."""
        with self._lock:
            return self._reap(self.clock())

    def close(self) -> None:
        with self._lock:
            self._open.clear()

    def _step(self, request: SequenceRequest) -> dict[str, np.ndarray]:
        cid = request.correlation_id
        try:
            entry = self._stream(request)
            frame = request_frame(request.inputs)
            try:
                result = entry.stream.step(frame)
            finally:  # idle time counts from the end of the sequence's last request
                entry.last_seen = self.clock()
        finally:
            # END closes the sequence for Triton whatever its last frame gave.
            if request.end:
                self._open.pop(cid, None)
        return response_tensors(result, len(self._open))

    def _stream(self, request: SequenceRequest) -> _Open:
        cid = request.correlation_id
        if request.start:
            self._open.pop(cid, None)  # a new video under an old ID starts afresh
            if len(self._open) >= self.settings.max_streams:
                raise SequenceError(
                    f"sequence {cid} cannot start: {len(self._open)} streams are open, the "
                    f"most this model holds (max streams {self.settings.max_streams}); end "
                    "one, or write the repository with a larger --max-streams"
                )
            self._open[cid] = _Open(self.pipeline.new_stream(self.options), self.clock())
        entry = self._open.get(cid)
        if entry is None:
            raise SequenceError(
                f"sequence {cid} has no stream: its first request must carry START "
                f"(sequence_start=True); a stream is freed by END or after "
                f"{self.settings.idle_timeout_s:g} s without a request"
            )
        return entry

    def _reap(self, now: float) -> int:
        idle = [
            cid
            for cid, entry in self._open.items()
            if now - entry.last_seen > self.settings.idle_timeout_s
        ]
        for cid in idle:
            del self._open[cid]
        return len(idle)
