"""FCOS target assignment: which location learns which box.

A location is positive for a box when it lies inside the box, within `center_radius`
strides of the box centre, and the box's largest side distance falls in its level's size
range; among several boxes the smallest wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FCOSTargets:
    """labels: (M,) class index or -1 for background; boxes: (M, 4) assigned GT box;
    centerness: (M,) FCOS centre-ness of the location in its box (0 for background)."""

    labels: torch.Tensor
    boxes: torch.Tensor
    centerness: torch.Tensor


def size_ranges(strides: torch.Tensor, base: float = 4.0) -> torch.Tensor:
    """Per-location (lo, hi) range of max(l, t, r, b) a level regresses: (M, 2).

    Level with stride s takes objects whose half-extent lies in (base*s/2, base*s]; the
    smallest level has no lower bound and the largest no upper bound.
    """
    lo = strides * base / 2
    hi = strides * base
    lo = torch.where(strides == strides.min(), torch.zeros_like(lo), lo)
    hi = torch.where(strides == strides.max(), torch.full_like(hi, float("inf")), hi)
    return torch.stack([lo, hi], dim=1)


def assign(
    points: torch.Tensor,
    strides: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    center_radius: float = 1.5,
) -> FCOSTargets:
    """Targets for one image. points (M, 2) (x, y); strides (M,); boxes (D, 4); labels (D,)."""
    m = points.shape[0]
    if boxes.numel() == 0:
        return FCOSTargets(
            torch.full((m,), -1, dtype=torch.int64), torch.zeros(m, 4), torch.zeros(m)
        )
    px, py = points[:, 0:1], points[:, 1:2]  # (M, 1)
    ltrb = torch.stack(
        [px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=2
    )  # (M, D, 4)
    inside = ltrb.min(dim=2).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    radius = strides.unsqueeze(1) * center_radius
    near_center = ((px - cx).abs() < radius) & ((py - cy).abs() < radius)
    extent = ltrb.max(dim=2).values
    ranges = size_ranges(strides)
    in_range = (extent > ranges[:, 0:1]) & (extent <= ranges[:, 1:2])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(inside & near_center & in_range, area.unsqueeze(0), float("inf"))
    best, gt = cost.min(dim=1)
    positive = torch.isfinite(best)
    d = ltrb[torch.arange(m), gt]  # (M, 4)
    lr, tb = d[:, [0, 2]], d[:, [1, 3]]
    ctr = torch.sqrt(
        (lr.min(1).values / lr.max(1).values.clamp(min=1e-6))
        * (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))
    ).clamp(min=0)
    return FCOSTargets(
        labels=torch.where(positive, labels[gt], -1),
        boxes=boxes[gt],
        centerness=torch.where(positive, ctr, torch.zeros_like(ctr)),
    )
