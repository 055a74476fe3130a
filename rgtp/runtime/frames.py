"""Turning a video frame into the model's input, and boxes back into frame pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(
    frame: np.ndarray | torch.Tensor, size: int, device: torch.device
) -> tuple[torch.Tensor, tuple[float, float]]:
    """RGB frame (H, W, 3) uint8/float in [0, 255] -> pixels (1, 3, size, size) float32.

    The frame is resized to the square model input as the paper does (no letterbox).
    Also returns (sx, sy), the factors taking model-input x, y back to frame pixels.
    """
    t = torch.as_tensor(frame)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an RGB frame of shape (H, W, 3), got {tuple(t.shape)}")
    h, w = t.shape[:2]
    x = t.to(device=device, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
    if (h, w) != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.contiguous(), (w / size, h / size)
