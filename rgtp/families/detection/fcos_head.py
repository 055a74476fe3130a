"""An FCOS-style anchor-free detection head over the feature pyramid.

Every location of every level predicts class logits, distances to the four box sides and a
centre-ness logit. Decoding is plain tensor arithmetic (no data-dependent shapes), so the
head exports to ONNX/TensorRT as one static graph; NMS runs afterwards in the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rgtp.families.detection.config import HeadConfig


@dataclass
class HeadOutputs:
    """Raw per-location predictions, all levels concatenated along M.

    cls_logits: (B, M, num_classes); ltrb: (B, M, 4) distances in pixels (>= 0);
    ctr_logits: (B, M); points: (M, 2) location centres (x, y) in pixels;
    strides: (M,) stride of each location's level.
    """

    cls_logits: torch.Tensor
    ltrb: torch.Tensor
    ctr_logits: torch.Tensor
    points: torch.Tensor
    strides: torch.Tensor


def _tower(c_in: int, channels: int, convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(c_in if i == 0 else channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


def level_points(size: int, stride: int) -> torch.Tensor:
    """Centres (x, y) in pixels of a size x size level, raster order: (size², 2)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


class FCOSHead(nn.Module):
    def __init__(self, cfg: HeadConfig, strides: list[int], img_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.strides = list(strides)
        ch = cfg.head_channels
        self.cls_tower = _tower(cfg.neck_channels, ch, cfg.head_convs, cfg.group_norm_groups)
        self.box_tower = _tower(cfg.neck_channels, ch, cfg.head_convs, cfg.group_norm_groups)
        self.cls_logits = nn.Conv2d(ch, cfg.num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(ch, 4, 3, padding=1)
        self.ctr_pred = nn.Conv2d(ch, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(strides)))
        points = [level_points(img_size // s, s) for s in strides]
        self.register_buffer("points", torch.cat(points), persistent=False)
        self.register_buffer(
            "point_strides",
            torch.cat(
                [torch.full((len(p),), float(s)) for p, s in zip(points, strides, strict=True)]
            ),
            persistent=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        # Focal-loss prior: every location starts at 1% foreground probability.
        nn.init.constant_(self.cls_logits.bias, -math.log(99.0))

    def forward(self, features: list[torch.Tensor]) -> HeadOutputs:
        cls, ltrb, ctr = [], [], []
        for i, (f, stride) in enumerate(zip(features, self.strides, strict=True)):
            c = self.cls_tower(f)
            r = self.box_tower(f)
            cls.append(self.cls_logits(c).flatten(2).transpose(1, 2))
            dist = torch.relu(self.box_pred(r) * self.scales[i]) * stride
            ltrb.append(dist.flatten(2).transpose(1, 2))
            ctr.append(self.ctr_pred(r).flatten(1))
        return HeadOutputs(
            torch.cat(cls, 1),
            torch.cat(ltrb, 1),
            torch.cat(ctr, 1),
            self.points,
            self.point_strides,
        )


def decode(out: HeadOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, M, 4) as (x1, y1, x2, y2) pixels and scores (B, M, num_classes) in [0, 1].

    The score is FCOS's class probability times centre-ness (the FCOS paper's ranking
    score). Without a square root the scores stay probability-like, so the method's
    threshold on box scores for s_L (0.1) means what it means for the authors' detector.
    """
    p = out.points.unsqueeze(0)
    boxes = torch.cat([p - out.ltrb[..., :2], p + out.ltrb[..., 2:]], dim=-1)
    scores = out.cls_logits.sigmoid() * out.ctr_logits.sigmoid().unsqueeze(-1)
    return boxes, scores
