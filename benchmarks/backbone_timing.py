"""What the latency benchmarks share: the paper's runtime parts, the dense baseline module and
moving test frames."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rgtp.families.detection.detector import Detector

BACKBONE_PARTS = ("embed", "select", "stages", "scatter", "rollout")  # the paper's runtime
OVERHEAD_PARTS = ("select", "scatter", "rollout")  # the method's work between engine calls


class DenseBackbone(nn.Module):
    """frame (1, 3, S, S) -> backbone map (N, C): the unpruned model, for the baseline."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.detector.features(frame).flatten(1, 2)[0]


def moving_frames(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """n RGB frames (size, size, 3) uint8 of a random texture moving (8, 4) px a frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size + 8 * n, size + 8 * n, 3), dtype=np.uint8)
    return [base[4 * t : 4 * t + size, 8 * t : 8 * t + size].copy() for t in range(n)]
