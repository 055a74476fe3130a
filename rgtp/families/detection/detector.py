"""The detector: ViTDet-style backbone, simple feature pyramid, FCOS head."""

from __future__ import annotations

import torch
from torch import nn

from rgtp.families.detection.config import DetectorConfig
from rgtp.families.detection.fcos_head import FCOSHead, HeadOutputs, decode
from rgtp.families.detection.neck import SimpleFeaturePyramid
from rgtp.models.vitdet import ViTDetBackbone


class Detector(nn.Module):
    """Pixels (B, 3, S, S), RGB in [0, 255] -> head outputs.

    The split into `embed`, the backbone blocks and `head_from_map` is the split the
    pruned runtime and the exported graphs use.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b, h = cfg.backbone, cfg.head
        self.backbone = ViTDetBackbone(b)
        self.neck = SimpleFeaturePyramid(
            b.embed_dim, h.neck_channels, h.scale_factors, b.patch_size
        )
        self.head = FCOSHead(h, self.neck.strides, b.img_size)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), False)

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB pixels -> (z_0, tokens), each (B, H, W, C)."""
        return self.backbone.embed((pixels - self.pixel_mean) / self.pixel_std)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The dense backbone output map (B, H, W, C)."""
        _, x = self.embed(pixels)
        for block in self.backbone.blocks:
            x = block(x)
        return x

    def head_outputs(self, feature_map: torch.Tensor) -> HeadOutputs:
        """Backbone map (B, H, W, C) -> raw head outputs."""
        return self.head(self.neck(feature_map.permute(0, 3, 1, 2)))

    def head_from_map(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone map (B, H, W, C) -> boxes (B, M, 4), scores (B, M, num_classes)."""
        return decode(self.head_outputs(feature_map))

    def forward(self, pixels: torch.Tensor) -> HeadOutputs:
        return self.head_outputs(self.features(pixels))
