"""What the runtime feeds a head graph and reads back from it, whichever head it is.

rgtp's own head reads the maintained map as (N, C); a user's ONNX head may read it as
(1, C, H, W) and may return boxes and scores with a leading batch of one. These two
functions are the only places that know.
"""

from __future__ import annotations

import torch

from rgtp.package.plan import GraphSpec


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
