"""SynthMotion clips as a ViViT reads them: the clip shape of a model, its held-out clips,
and a batch of clips as its input."""

from __future__ import annotations

import numpy as np
import torch

from rgtp.data.synthmotion import CLASSES, Clip, SynthMotionConfig, generate_clip, heldout_seeds
from rgtp.families.classification.config import ViViTConfig


def data_config(cfg: ViViTConfig) -> SynthMotionConfig:
    """The SynthMotion clips a model reads: its input side and frame count, and one instant
    held for a tubelet's frames (so motion lives between time steps, never inside one)."""
    if cfg.num_classes != len(CLASSES):
        raise ValueError(
            f"{cfg.name} has {cfg.num_classes} classes, SynthMotion has {len(CLASSES)}"
        )
    return SynthMotionConfig(
        size=cfg.spatial.img_size, num_frames=cfg.num_frames, hold=cfg.spatial.tubelet
    )


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """Clips (B, T, S, S, 3) uint8 RGB -> the model's input (B, 3, T, S, S) float in [0, 255]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float()


def heldout_clips(n: int, cfg: SynthMotionConfig, first: int = 0) -> list[Clip]:
    """n held-out clips from the `first`-th on (balanced over the classes when n and first
    are multiples of 12)."""
    return [generate_clip(s, cfg) for s in heldout_seeds(first + n)[first:]]
