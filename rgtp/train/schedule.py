"""What every family's trainer shares: AdamW's parameter groups and the learning-rate
schedule."""

from __future__ import annotations

import math

import torch

from rgtp.train.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, position tables and per-level scales."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim <= 1 or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * 0.5 * (1 + math.cos(math.pi * progress))
