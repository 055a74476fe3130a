"""What the runtime feeds a head graph and reads back from it, whichever head it is.

rgtp's own head reads the maintained map as (N, C); a user's ONNX head may read it as
(1, C, H, W) and may return boxes and scores with a leading batch of one. These two
functions are the only places that know.
"""

from __future__ import annotations

import torch

from rgtp.package.plan import GraphSpec, TensorSpec


def as_nchw(out_map: torch.Tensor, grid: int) -> torch.Tensor:
    """The backbone map (N, C) as a conv head reads it: a contiguous copy (1, C, H, W)."""
    return out_map.t().reshape(1, out_map.shape[1], grid, grid).contiguous()


def head_feeds(spec: GraphSpec, out_map: torch.Tensor, grid: int) -> dict[str, torch.Tensor]:
    """The head's input from the backbone map (N, C), in the layout the head declares."""
    (t,) = spec.inputs
    return {t.name: as_nchw(out_map, grid) if len(t.shape) == 4 else out_map}


def head_boxes_scores(
    spec: GraphSpec, outputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (M, 4) in model-input pixels and scores (M, classes): the first two outputs."""
    boxes, scores = (outputs[t.name] for t in spec.outputs[:2])
    if boxes.ndim == 3:
        boxes, scores = boxes[0], scores[0]
    return boxes, scores


def check_user_head(spec: GraphSpec, grid: int, dim: int) -> None:
    """A user's head graph must read the backbone map, as (N, C) or (1, C, H, W), and give
    boxes (M, 4) and scores (M, classes) first, each optionally with a leading batch of 1."""
    accepted = [(grid * grid, dim), (1, dim, grid, grid)]
    if len(spec.inputs) != 1 or tuple(spec.inputs[0].shape) not in accepted:
        got = [(t.name, tuple(t.shape)) for t in spec.inputs]
        raise ValueError(
            f"a user head takes one float32 input, the backbone map of shape {accepted[0]} or "
            f"{accepted[1]}; this graph takes {got}"
        )
    if len(spec.outputs) < 2:
        raise ValueError("a user head returns boxes (M, 4) and scores (M, classes) first")
    boxes, scores = (_unbatched(t) for t in spec.outputs[:2])
    if len(boxes) != 2 or boxes[1] != 4 or len(scores) != 2 or boxes[0] != scores[0]:
        raise ValueError(
            "a user head's first two outputs must be boxes (M, 4) in model-input pixels and "
            f"scores (M, classes); got {tuple(spec.outputs[0].shape)} and "
            f"{tuple(spec.outputs[1].shape)}"
        )
    if any(t.dtype != "float32" for t in (*spec.inputs, *spec.outputs[:2])):
        raise ValueError("a user head's map input and box/score outputs must be float32")


def _unbatched(t: TensorSpec) -> tuple[int | str, ...]:
    shape = tuple(t.shape)
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
