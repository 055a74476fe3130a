"""Training settings (kept apart from the trainer so the CLI can read defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The schedule is a fixed number of steps (not a time budget), so
    the same seed gives the same weights on the same software stack."""

    model: str = "vitdet-small"
    steps: int = 6000
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.05
    warmup: int = 300
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = True
    workers: int = 1
    log_every: int = 50
    # the shipped file: float16 halves it (loaded back into float32 parameters)
    save_dtype: str = "float16"
