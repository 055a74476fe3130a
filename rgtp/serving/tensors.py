"""The served model's tensors: what a request carries and what a response returns, by name,
with the batch dimension of one that Triton's sequence batcher adds (every tensor is
[1, ...]: one frame of one sequence per request).

Inputs (exactly one of them per request):
    FRAME        uint8   [1, H, W, 3]  RGB, 0..255
    FRAME_FLOAT  float32 [1, H, W, 3]  RGB pixel values in [0, 255], finite
Outputs:
    BOXES    float32 [1, D, 4]  x0, y0, x1, y1 in the frame's pixels
    SCORES   float32 [1, D]
    LABELS   int64   [1, D]
    K        int32   [1, 1]     tokens kept this frame
    KEEP     int64   [1, K]     the kept token indices
    TIMINGS  bytes   [1, 1]     JSON {part: milliseconds} of the step (`StepResult.timings`)
    STREAMS  int32   [1, 1]     streams the model holds after this request
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from rgtp.models.families.detection import FrameResult

FRAME, FRAME_FLOAT = "FRAME", "FRAME_FLOAT"
FRAME_INPUTS = {FRAME: np.uint8, FRAME_FLOAT: np.float32}
# name -> (numpy dtype, dims after the batch dimension; -1: any length)
OUTPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    "BOXES": (np.float32, (-1, 4)),
    "SCORES": (np.float32, (-1,)),
    "LABELS": (np.int64, (-1,)),
    "K": (np.int32, (1,)),
    "KEEP": (np.int64, (-1,)),
    "TIMINGS": (np.object_, (1,)),
    "STREAMS": (np.int32, (1,)),
}
ACCEPTED = (
    "send one frame per request as FRAME (uint8 [1, H, W, 3]) or FRAME_FLOAT "
    "(float32 [1, H, W, 3], pixel values in [0, 255])"
)


class RequestError(ValueError):
    """A request's tensors hold no frame, or more than one. Its sequence is unchanged."""


def request_frame(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The frame (H, W, 3) of a request's inputs; RequestError if there is not exactly one.
    The frame contract itself (dtype, shape, finite values) is the stream's to check."""
    given = [name for name in FRAME_INPUTS if name in inputs]
    if len(given) != 1:
        what = "no frame" if not given else "both FRAME and FRAME_FLOAT"
        raise RequestError(f"the request has {what}; {ACCEPTED}")
    (name,) = given
    batch = inputs[name]
    if batch.ndim == 0 or batch.shape[0] != 1:
        raise RequestError(
            f"{name} has shape {list(batch.shape)}: a request carries one frame of its "
            f"sequence; {ACCEPTED}"
        )
    return batch[0]


def response_tensors(result: FrameResult, streams: int) -> dict[str, np.ndarray]:
    """A step's result as the response's output tensors (see the module docstring)."""
    dets = result.detections
    values = {
        "BOXES": dets.boxes.cpu().numpy(),
        "SCORES": dets.scores.cpu().numpy(),
        "LABELS": dets.labels.cpu().numpy(),
        "K": np.array([result.k]),
        "KEEP": result.keep.numpy(),
        "TIMINGS": np.array([json.dumps(result.timings).encode()], dtype=np.object_),
        "STREAMS": np.array([streams]),
    }
    return {
        name: np.asarray(values[name], dtype=dtype)[None] for name, (dtype, _) in OUTPUTS.items()
    }
