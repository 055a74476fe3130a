"""Box arithmetic for (x1, y1, x2, y2) boxes: IoU, GIoU, NMS and detection post-processing.

torchvision's `nms` would be the natural call, but its compiled operators do not load beside
the CPU-only torch wheel this project pins, so the few lines it needs live here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rgtp.core.checks import check_int, check_real
from rgtp.package.family import FrameGeometry


@dataclass
class Detections:
    """Final detections of one frame: boxes (D, 4) pixels, scores (D,), labels (D,) int64."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def scaled(self, sx: float, sy: float) -> Detections:
        """The same detections with x multiplied by sx and y by sy."""
        factor = torch.tensor([sx, sy, sx, sy], dtype=self.boxes.dtype, device=self.boxes.device)
        return Detections(self.boxes * factor, self.scores, self.labels)

    def to_list(self, class_names: tuple[str, ...] = ()) -> list[dict]:
        out = []
        for box, score, label in zip(
            self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), strict=True
        ):
            rec = {"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label}
            if class_names:
                rec["name"] = class_names[label]
            out.append(rec)
        return out


def box_area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU: a (P, 4), b (Q, 4) -> (P, Q)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter).clamp(min=1e-9)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise generalized IoU of matched boxes a, b (P, 4) -> (P,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (box_area(a) + box_area(b) - inter).clamp(min=1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1)
    return inter / union - (hull - union) / hull.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices (into boxes) of kept boxes, by decreasing score."""
    order = scores.argsort(descending=True)
    # The greedy pass is inherently sequential; a host-side boolean matrix keeps each of
    # its steps to a few microseconds.
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # Shift every class to its own region of the plane, then one NMS does all classes.
    shift = labels.to(boxes.dtype) * (boxes.max() + 1)
    return nms(boxes + shift[:, None], scores, iou_threshold)


def check_postprocess(
    score_threshold: float, nms_iou: float, max_detections: int, pre_nms_topk: int = 1000
) -> None:
    """ValueError for post-processing settings outside their meaning: scores are
    probabilities, an NMS IoU threshold is in (0, 1], counts are >= 1."""
    check_real("score_threshold", score_threshold, 0.0, 1.0)
    check_real("nms_iou", nms_iou, 0.0, 1.0, low_open=True)
    check_int("max_detections", max_detections, 1)
    check_int("pre_nms_topk", pre_nms_topk, 1)


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
) -> Detections:
    """Decoded head output of one image, boxes (M, 4) and scores (M, num_classes), to the
    final detections: score threshold, top candidates, class-wise NMS."""
    check_postprocess(score_threshold, nms_iou, max_detections, pre_nms_topk)
    flat = scores.flatten()
    cand = torch.nonzero(flat > score_threshold).squeeze(1)
    if cand.numel() > pre_nms_topk:
        cand = cand[flat[cand].topk(pre_nms_topk).indices]
    num_classes = scores.shape[1]
    loc, labels = cand // num_classes, cand % num_classes
    cand_boxes, cand_scores = boxes[loc], flat[cand]
    keep = batched_nms(cand_boxes, cand_scores, labels, nms_iou)[:max_detections]
    return Detections(cand_boxes[keep], cand_scores[keep], labels[keep])


def detections_to_frame(geometry: FrameGeometry, dets: Detections) -> Detections:
    """Detections in model-input pixels -> the frame's pixels (`FrameGeometry`), clipped to
    the frame; those left with no area are dropped."""
    boxes, kept = geometry.boxes_to_frame(dets.boxes)
    return Detections(boxes[kept], dets.scores[kept], dets.labels[kept])
