"""ViTDet's simple feature pyramid: one backbone map resampled to several strides.

Level names are `p{log2(stride)}` and every level ends in a 1x1 and a 3x3 convolution that
carry their LayerNorm as a `norm` child, the layout detectron2 uses, so its `simfp_*`
weights map onto these by a prefix rename.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNorm(nn.Conv2d):
    """Bias-free convolution followed by its LayerNorm2d (`norm` child)."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.norm = LayerNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


def _resample_layers(dim: int, scale: float) -> tuple[list[nn.Module], int]:
    """Layers taking the stride-16 map to `scale` times its resolution, and their width."""
    if scale == 4.0:
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        ]
        return layers, dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(2, stride=2)], dim
    raise ValueError(f"unsupported scale factor {scale}")


class SimpleFeaturePyramid(nn.Module):
    """(B, C, H, W) backbone map -> one (B, out_channels, H*s, W*s) map per scale factor."""

    def __init__(
        self, dim: int, out_channels: int, scale_factors: tuple[float, ...], patch_size: int = 16
    ) -> None:
        super().__init__()
        self.strides: list[int] = []
        levels: dict[str, nn.Module] = {}
        for scale in scale_factors:
            layers, width = _resample_layers(dim, scale)
            stride = int(patch_size / scale)
            layers += [ConvNorm(width, out_channels, 1), ConvNorm(out_channels, out_channels, 3)]
            levels[f"p{int(math.log2(stride))}"] = nn.Sequential(*layers)
            self.strides.append(stride)
        self.levels = nn.ModuleDict(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels.values()]
