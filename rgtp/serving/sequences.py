"""One rgtp stream per Triton sequence (correlation ID), over one shared pipeline.

A request with START opens a new stream for its correlation ID (replacing any earlier one of
that ID) whatever its frame then gives, END frees it after its frame whatever that gives,
and a sequence with no request for `idle_timeout_s` after its last response is freed by
`reap`. A request whose frame is refused (no frame, wrong shape or dtype, NaN, too many
pixels, an engine's NaN) gets an error and leaves its stream, and every other, as they
were: a step is a transaction (`rgtp.runtime.stream`).

Sequence slots: one truth. Triton's sequence batcher (`rgtp.serving.model_config`) keeps
more slots than the model holds streams (`SLOTS_PER_STREAM` x max_streams candidate
sequences), so every START reaches the model and none waits in Triton's backlog, where the
wait would count against Triton's idle timeout and the sequence be dropped right after it
got a slot. The model admits at most `max_streams` of them: a START beyond that is refused
at once (`CapacityError`, UNAVAILABLE: retry later), before any frame of it runs. Its
Triton slot stays held until the sequence's END or Triton's idle timeout, so a client
retries a refused START under the same correlation ID (which reuses that slot); were more
than (SLOTS_PER_STREAM - 1) x max_streams refused sequences held at once, Triton would
queue further STARTs in its backlog again. Triton
frees an idle sequence's slot after twice the model's idle timeout, so the stream table
only ever holds streams of sequences Triton still holds: the model frees a stream first
(after `idle_timeout_s`), and a frame sent after that gets "has no stream" (send START
again). Triton queues at most one request per sequence per execute, so a request waits at
most one execute, far less than the timeout, before the model sees it.

Batched: `StreamTable.execute`, the one place that walks over the requests of a Triton
`execute` call, steps all of them in one `Pipeline.step_many` call (one engine call per
stage for the streams at the same (stage, K)), bit-identical to each stream alone; a
stream's failure is that request's error only.

Retries: a request may carry its frame's index in the sequence (FRAME_INDEX, 0 for the
START frame). A request that reached the model has stepped its stream even when its client
gave up waiting; resent with the same index it returns the stored response of that frame
and steps nothing, so later frames equal those of an unbroken sequence. An index past the
next one, or before the last one, is refused naming the one expected. A frame that was
refused did not count: resend it with the same index. Without FRAME_INDEX a request is the
sequence's next frame (not safe to resend). START with index 0 (or none) opens the stream
afresh, so a resent START frame steps again and gives the same response; START with an
index above 0 resumes the stream the model holds for that ID (the next frame steps, the
last one returns its stored response; with no stream it is refused): Triton drops a
sequence whose queued request was cancelled (a client deadline or cancel before the request
ran), cancels the requests queued behind it and refuses the next ("must specify the START
flag") without telling the model, so START is how a client gets the sequence a Triton slot
again and goes on where it was (`rgtp.serving.client` does all this). Triton forgets a
sequence when its END request arrives, so an END request cannot be resent (Triton refuses
it: "must specify the START flag"); a client that needs its last frame's response to be
retryable sends END on one more request, the last frame again with its index, which returns
the stored response and frees the stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgtp.runtime import FrameError, Pipeline, StepManyError, Stream
from rgtp.serving.settings import ServingSettings
from rgtp.serving.tensors import RequestError, request_frame, request_index, response_tensors

# Triton's candidate sequences per stream the model holds (`model_config`): the headroom
# for sequences whose START was refused, which hold a Triton slot until their END or
# Triton's idle timeout.
SLOTS_PER_STREAM = 4
# Triton's idle timeout over the model's: the model frees a stream first.
TRITON_IDLE_FACTOR = 2

Response = dict[str, np.ndarray]


class SequenceError(ValueError):
    """A request that does not fit its sequence: a correlation ID with no stream and no
    START, or a frame index other than the next (or the last, resent). The other streams
    are unchanged."""


class CapacityError(SequenceError):
    """A START when `max_streams` streams are open: refused before it opens anything."""


def error_status(error: Exception) -> str:
    """The Triton status an error is answered with: the client's mistake (INVALID_ARG),
    the model full for now (UNAVAILABLE), or the server's own failure (INTERNAL)."""
    if isinstance(error, CapacityError):
        return "UNAVAILABLE"
    if isinstance(error, RequestError | FrameError | SequenceError):
        return "INVALID_ARG"
    return "INTERNAL"


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
    last_seen: float  # seconds, on the table's clock: the end of its last request
    next_index: int = 0  # the index of the sequence's next frame: frames taken so far
    last: Response | None = None  # the response to frame next_index - 1


@dataclass
class _Step:
    """A request ready to step: where its answer goes, its sequence and frame, and the
    streams open once its START or END took effect."""

    position: int
    entry: _Open
    frame: np.ndarray
    streams: int


class StreamTable:
    """The streams of the sequences a model instance holds. Thread-safe: `execute` and
    `reap` (e.g. from a timer thread) exclude each other. `observe(k, ms)` hears of every
    step run (tokens kept, milliseconds), e.g. for metrics."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: ServingSettings,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.pipeline, self.settings, self.clock, self.observe = pipeline, settings, clock, observe
        self.family = pipeline.plan.family.name
        self.options = settings.stream_options()
        self._open: dict[int | str, _Open] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def execute(self, requests: Sequence[SequenceRequest]) -> list[Response | Exception]:
        """Each request's output tensors (`rgtp.serving.tensors`), or the error to answer it
        with, in request order. Sequences idle past the timeout are freed first (not those
        with a request here)."""
        with self._lock:
            self._reap(self.clock(), {r.correlation_id for r in requests})
            results: list[Response | Exception | None] = [None] * len(requests)
            batch: dict[int | str, _Step] = {}
            for position, request in enumerate(requests):
                if request.correlation_id in batch:  # (Triton sends one a sequence, but)
                    self._step(list(batch.values()), results)
                    batch = {}
                try:
                    ready = self._admit(position, request)
                # A server answers every request: an unforeseen error in one request becomes
                # its error response, not the end of every other sequence.
                except Exception as e:
                    results[position] = e
                    continue
                if isinstance(ready, _Step):
                    batch[request.correlation_id] = ready
                else:
                    results[position] = ready
            self._step(list(batch.values()), results)
            assert all(r is not None for r in results)
            return results  # type: ignore[return-value]

    def reap(self) -> int:
        """Free the streams of sequences idle for longer than the timeout; how many."""
        with self._lock:
            return self._reap(self.clock(), set())

    def close(self) -> None:
        with self._lock:
            self._open.clear()

    def _admit(self, position: int, request: SequenceRequest) -> _Step | Response:
        """A request's START and END taken into the table, its frame and index read: the
        step to run, or the stored response of a resent frame."""
        cid = request.correlation_id
        try:
            index = request_index(request.inputs)
            entry = self._stream(request, index)
            entry.last_seen = self.clock()
            frame = request_frame(request.inputs, self.settings.max_pixels)
        finally:
            # END closes the sequence for Triton whatever its frame gives.
            if request.end:
                self._open.pop(cid, None)
        if index is not None and index != entry.next_index:
            return self._resent(cid, entry, index)
        return _Step(position, entry, frame, len(self._open))

    def _resent(self, cid: int | str, entry: _Open, index: int) -> Response:
        """The stored response of frame `index`, resent; SequenceError for another index."""
        expected = entry.next_index
        if index == expected - 1 and entry.last is not None:
            return entry.last | {"STREAMS": np.array([[len(self._open)]], dtype=np.int32)}
        taken = f"frames 0..{expected - 1} were taken" if expected else "no frame was taken"
        raise SequenceError(
            f"sequence {cid} expects frame {expected} (FRAME_INDEX {expected}), got {index}: "
            f"{taken}, and only the last one can be resent; send frames in order"
        )

    def _stream(self, request: SequenceRequest, index: int | None) -> _Open:
        cid = request.correlation_id
        if request.start and index:  # START at a later frame: resume the open stream
            entry = self._open.get(cid)
            if entry is None:
                raise SequenceError(
                    f"sequence {cid} cannot resume at frame {index}: it has no stream (a "
                    f"stream is freed by END or after {self.settings.idle_timeout_s:g} s "
                    "without a request); start it again at frame 0 (FRAME_INDEX 0)"
                )
            return entry
        if request.start:
            self._open.pop(cid, None)  # a new video under an old ID starts afresh
            if len(self._open) >= self.settings.max_streams:
                raise CapacityError(
                    f"sequence {cid} cannot start: {len(self._open)} streams are open, the "
                    f"most this model holds (max streams {self.settings.max_streams}); retry "
                    "the START later, or write the repository with a larger --max-streams"
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

    def _step(self, batch: list[_Step], results: list[Any]) -> None:
        """Step the frames of `batch` together, each answer into `results`."""
        if not batch:
            return
        try:
            streams, frames = [s.entry.stream for s in batch], [s.frame for s in batch]
            stepped = self.pipeline.step_many(streams, frames)
            errors: dict[int, Exception] = {}
        except StepManyError as e:
            stepped, errors = e.results, e.errors
        except Exception as e:  # a failure of the whole call: every request's error
            stepped, errors = [None] * len(batch), dict.fromkeys(range(len(batch)), e)
        done = self.clock()
        for i, (s, result) in enumerate(zip(batch, stepped, strict=True)):
            s.entry.last_seen = done  # idle time counts from the end of the last request
            if i in errors:
                results[s.position] = errors[i]
                continue
            response = response_tensors(self.family, result, s.streams)
            s.entry.next_index += 1
            s.entry.last = response
            results[s.position] = response
            if result is not None and self.observe is not None:
                self.observe(result.k, result.timings["total"])

    def _reap(self, now: float, busy: set[int | str]) -> int:
        idle = [
            cid
            for cid, entry in self._open.items()
            if cid not in busy and now - entry.last_seen > self.settings.idle_timeout_s
        ]
        for cid in idle:
            del self._open[cid]
        return len(idle)
