"""A camera's sequence on a served rgtp model, over gRPC: every frame sent with its
FRAME_INDEX, so that each frame steps the model's stream exactly once whatever happens to
a request on the way (`rgtp.serving.sequences` gives the server's side).

What a request can meet, and what `SequenceClient.send` does about it:
    its deadline passed (DEADLINE_EXCEEDED)    resend the frame with its index: the stored
                                               response if it had stepped, else its step
    Triton dropped the sequence: a request     resend the frame with START and its index:
      cancelled before it ran (a deadline or   the model resumes the stream it still
      a cancel while it waited in Triton's     holds (Triton cancels a sequence whose
      queue) cancels the requests queued       queued request was cancelled, and refuses
      behind it (CANCELLED) and the next one   its next request, "must specify the START
      ("must specify the START flag")          flag"; the model is never told)
    anything else (a refused frame, a full     raised: the frame keeps its index, so
      model at START, a stream freed idle)     `send` with it again resends it
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from rgtp.serving.tensors import FRAME, FRAME_FLOAT, FRAME_INDEX

# Triton's answer to a request of a sequence it holds no slot for.
_DROPPED = "must specify the START flag"


def _resend_as(error: InferenceServerException) -> str | None:
    """How to resend a frame whose request failed with `error`: "again" (the same request),
    "resume" (with START), or None (not a failure a resend mends)."""
    status = str(error.status() or "")
    if status.endswith("DEADLINE_EXCEEDED"):
        return "again"
    if status.endswith("CANCELLED") or _DROPPED in str(error):
        return "resume"
    return None


class SequenceClient:
    """The frames of one sequence (`sequence_id`) to `model` over `client` (a
    `tritonclient.grpc.InferenceServerClient`), in order. `send` returns the response of
    each frame, resending one up to `attempts` times in all (each with `timeout_s`, None:
    no deadline); `close` frees the model's stream. Not thread-safe: one sequence is one
    camera's frames, in order."""

    def __init__(
        self,
        client: grpcclient.InferenceServerClient,
        model: str,
        sequence_id: int | str,
        attempts: int = 3,
        timeout_s: float | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts is {attempts}: at least 1")
        self.client, self.model, self.sequence_id = client, model, sequence_id
        self.attempts, self.timeout_s = attempts, timeout_s
        self.index = 0  # the index of the next frame: frames answered so far
        self.resumed = 0  # resends with START after Triton had dropped the sequence
        self.closed = False
        self._last: np.ndarray | None = None  # the last frame answered, for `close`

    def send(self, frame: np.ndarray, timeout_s: float | None = None) -> grpcclient.InferResult:
        """The response to `frame`, the sequence's next frame (uint8 or float32 [H, W, 3]).
        On an error no resend mends, or the last attempt's, raises it; the frame keeps its
        index, so sending it again resends it."""
        if self.closed:
            raise ValueError(f"sequence {self.sequence_id} is closed: start another to go on")
        start = self.index == 0
        deadline = self.timeout_s if timeout_s is None else timeout_s
        for attempt in range(1, self.attempts + 1):
            try:
                result = self._infer(frame, start=start, client_timeout=deadline)
            except InferenceServerException as e:
                how = _resend_as(e)
                if how is None or attempt == self.attempts:
                    raise
                if how == "resume" and self.index > 0:
                    start = True  # resumes the stream: FRAME_INDEX > 0
                    self.resumed += 1
                continue
            self.index += 1
            self._last = frame
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> grpcclient.InferResult | None:
        """End the sequence: the last frame again, with its index and END, returns its
        stored response and frees the stream (an END request itself cannot be resent:
        Triton forgets the sequence when it arrives). None when no frame was answered."""
        self.closed = True
        if self._last is None:
            return None
        self.index -= 1  # the last frame again
        try:
            return self._infer(self._last, start=False, end=True, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            if _resend_as(e) != "resume":
                raise
            return self._infer(self._last, start=True, end=True, client_timeout=self.timeout_s)
        finally:
            self.index += 1

    def _infer(self, frame: np.ndarray, start: bool, end: bool = False, **kw: Any):
        name, dtype = (FRAME, "UINT8") if frame.dtype == np.uint8 else (FRAME_FLOAT, "FP32")
        pixels = grpcclient.InferInput(name, [1, *frame.shape], dtype)
        pixels.set_data_from_numpy(frame[None])
        index = grpcclient.InferInput(FRAME_INDEX, [1, 1], "INT64")
        index.set_data_from_numpy(np.array([[self.index]], dtype=np.int64))
        return self.client.infer(
            self.model,
            [pixels, index],
            sequence_id=self.sequence_id,
            sequence_start=start,
            sequence_end=end,
            **kw,
        )
