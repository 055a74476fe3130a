"""The served model's tensors: what a request carries and what a response returns, by name,
with the batch dimension of one that Triton's sequence batcher adds (every tensor is
[1, ...]: one frame of one sequence per request).

Inputs:
    FRAME        uint8   [1, H, W, 3]  RGB, 0..255
    FRAME_FLOAT  float32 [1, H, W, 3]  RGB, pixel = value * the repository's float scale
                                       (`rgtp triton --float-scale`; none: refused)
    FRAME_INDEX  int64   [1, 1]        optional: the frame's index in its sequence (0 for
                                       the START frame that opens it; START with a later
                                       index resumes it); makes a resent frame safe
                                       (`rgtp.serving.sequences`)
Exactly one of FRAME and FRAME_FLOAT per request, at most `max_pixels` pixels (H x W).

Outputs of every family:
    K        int32   [1, 1]     tokens kept this step (0: no step ran, see STEP)
    KEEP     int64   [1, K]     the kept token indices
    STEP     int64   [1, 1]     the time step this frame completed; -1 for a frame that
                                only filled a time step (a classifier's tubelet): then K is
                                0 and every other output is empty
    TIMINGS  bytes   [1, 1]     JSON {part: milliseconds} of the step (`StepResult.timings`)
    STREAMS  int32   [1, 1]     streams the model holds after this request
and the family's own (`FAMILY_OUTPUTS`, the one place a result meets its tensors):
    detection:       BOXES float32 [1, D, 4] (x0, y0, x1, y1 in the frame's pixels),
                     SCORES float32 [1, D], LABELS int64 [1, D]
    classification:  CLASS_SCORES float32 [1, L], the class probabilities of the clip of
                     the last s steps; L = 0 until s steps have been seen
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FRAME, FRAME_FLOAT, FRAME_INDEX = "FRAME", "FRAME_FLOAT", "FRAME_INDEX"
FRAME_INPUTS = {FRAME: np.uint8, FRAME_FLOAT: np.float32}
INPUTS = [*FRAME_INPUTS, FRAME_INDEX]
# name -> (numpy dtype, dims after the batch dimension; -1: any length)
Outputs = dict[str, tuple[type, tuple[int, ...]]]
COMMON_OUTPUTS: Outputs = {
    "K": (np.int32, (1,)),
    "KEEP": (np.int64, (-1,)),
    "STEP": (np.int64, (1,)),
    "TIMINGS": (np.object_, (1,)),
    "STREAMS": (np.int32, (1,)),
}
ACCEPTED = (
    "send one frame per request as FRAME (uint8 [1, H, W, 3]) or FRAME_FLOAT "
    "(float32 [1, H, W, 3]), and optionally its index in the sequence as FRAME_INDEX "
    "(int64 [1, 1])"
)


class RequestError(ValueError):
    """A request's tensors hold no frame, more than one, a frame too large to read, or a
    malformed frame index. Its sequence is unchanged."""


@dataclass(frozen=True)
class FamilyOutputs:
    """A family's outputs beside the common ones: their specs, and their values (no batch
    dimension) from a step's result."""

    outputs: Outputs
    values: Callable[[Any], dict[str, np.ndarray]]


def _detections(result: Any) -> dict[str, np.ndarray]:
    dets = result.detections
    return {
        "BOXES": dets.boxes.cpu().numpy(),
        "SCORES": dets.scores.cpu().numpy(),
        "LABELS": dets.labels.cpu().numpy(),
    }


def _class_scores(result: Any) -> dict[str, np.ndarray]:
    scores = result.scores
    return {"CLASS_SCORES": np.zeros(0) if scores is None else scores.cpu().numpy()}


FAMILY_OUTPUTS = {
    "detection": FamilyOutputs(
        {
            "BOXES": (np.float32, (-1, 4)),
            "SCORES": (np.float32, (-1,)),
            "LABELS": (np.int64, (-1,)),
        },
        _detections,
    ),
    "classification": FamilyOutputs({"CLASS_SCORES": (np.float32, (-1,))}, _class_scores),
}


def outputs(family: str) -> Outputs:
    """Every output of a model of `family`, the family's first (see the module docstring)."""
    return FAMILY_OUTPUTS[family].outputs | COMMON_OUTPUTS


def request_frame(inputs: Mapping[str, np.ndarray], max_pixels: int) -> np.ndarray:
    """The frame (H, W, 3) of a request's inputs, its size checked before anything reads it;
    RequestError if there is not exactly one frame or it has more than `max_pixels` pixels.
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
    if batch.ndim >= 3 and batch.shape[1] * batch.shape[2] > max_pixels:
        h, w = batch.shape[1:3]
        raise RequestError(
            f"{name} is {h} x {w} = {h * w} pixels, more than this model reads ({max_pixels}"
            " pixels, `rgtp triton --max-pixels`); resize it before sending"
        )
    return batch[0]


def request_index(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The frame index a request carries (FRAME_INDEX), None without one; RequestError for
    one that is not a single integer >= 0."""
    if FRAME_INDEX not in inputs:
        return None
    index = inputs[FRAME_INDEX]
    if index.shape != (1, 1) or index.dtype.kind not in "iu" or int(index[0, 0]) < 0:
        raise RequestError(
            f"FRAME_INDEX is {index.dtype} of shape {list(index.shape)} with values "
            f"{index.ravel()[:4].tolist()}: expected one int64 >= 0 ([1, 1]), the frame's "
            "index in its sequence"
        )
    return int(index[0, 0])


def response_tensors(family: str, result: Any, streams: int) -> dict[str, np.ndarray]:
    """A step's result (None: the frame only filled a time step) as the response's output
    tensors (see the module docstring)."""
    specs = outputs(family)
    if result is None:
        values = {
            n: np.zeros([0 if d == -1 else d for d in dims]) for n, (_, dims) in specs.items()
        }
        values |= {"STEP": np.array([-1]), "K": np.array([0]), "TIMINGS": np.array([b"{}"])}
    else:
        values = FAMILY_OUTPUTS[family].values(result) | {
            "K": np.array([result.k]),
            "KEEP": result.keep.numpy(),
            "STEP": np.array([result.index]),
            "TIMINGS": np.array([json.dumps(result.timings).encode()]),
        }
    values["STREAMS"] = np.array([streams])
    return {name: np.asarray(values[name], dtype=dtype)[None] for name, (dtype, _) in specs.items()}
