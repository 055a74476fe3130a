"""FCOS losses: sigmoid focal loss, GIoU box loss, centre-ness BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rgtp.families.detection.boxes import generalized_iou
from rgtp.families.detection.fcos_head import HeadOutputs
from rgtp.families.detection.tools.fcos_targets import FCOSTargets


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Summed focal loss (Lin et al.) of logits against 0/1 targets of the same shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * (1 - p_t) ** gamma
    return (weight * ce).sum()


def fcos_loss(out: HeadOutputs, targets: list[FCOSTargets]) -> dict[str, torch.Tensor]:
    """Losses of a batch, each normalised by the number of positive locations."""
    labels = torch.stack([t.labels for t in targets])  # (B, M)
    gt_boxes = torch.stack([t.boxes for t in targets])  # (B, M, 4)
    ctr_t = torch.stack([t.centerness for t in targets])  # (B, M)
    pos = labels >= 0
    num_pos = pos.sum().clamp(min=1).float()
    cls_logits = out.cls_logits.float()
    onehot = torch.zeros_like(cls_logits)
    onehot[pos] = F.one_hot(labels[pos], cls_logits.shape[-1]).to(onehot.dtype)
    loss_cls = sigmoid_focal_loss(cls_logits, onehot) / num_pos
    if not pos.any():
        zero = cls_logits.sum() * 0
        return {"cls": loss_cls, "box": zero, "ctr": zero}
    p = out.points.unsqueeze(0).expand_as(out.ltrb[..., :2])[pos]
    ltrb = out.ltrb.float()[pos]
    pred = torch.cat([p - ltrb[:, :2], p + ltrb[:, 2:]], dim=1)
    w = ctr_t[pos]
    loss_box = ((1 - generalized_iou(pred, gt_boxes[pos])) * w).sum() / w.sum().clamp(min=1e-6)
    loss_ctr = (
        F.binary_cross_entropy_with_logits(out.ctr_logits.float()[pos], w, reduction="sum")
        / num_pos
    )
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr}
