"""What an evaluation is asked for: `rgtp eval`'s settings, handed to the model's family
(its `evaluate_model` tool), which reads those that apply to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rgtp.models.config import PruningConfig


@dataclass(frozen=True)
class EvalRequest:
    """name: the named model; weights: the file it was loaded from (None: the shipped one).
    ks: K values and keep schedules (one K per stage) to run pruned; dense: also the dense
    reference; radius, reset_every, reset, pruning: the streams' settings (pruning None:
    the model's). sampling: frame sampling (a detector's video; the first unless
    `ablate_r`); ablate_r: tracking radii to ablate at ks[0]. backend, device, partition,
    prune_from, package: the pipeline (`rgtp.eval.pipeline.model_pipeline`). sequences,
    frames: a detector's held-out videos; clips, finetuned_dir: a classifier's held-out
    clips and where its fine-tuned temporal transformers are (None: beside the weights)."""

    name: str
    weights: Path | None = None
    ks: Sequence[int | tuple[int, ...]] = ()
    dense: bool = True
    radius: int = 1
    reset_every: int = 8
    reset: str = "dense"
    pruning: PruningConfig | None = None
    sampling: Sequence[int] = (1,)
    ablate_r: Sequence[int] = ()
    backend: str = "ort"
    device: str = "cpu"
    partition: str | None = None
    prune_from: str = "input"
    package: str | Path | None = None
    sequences: int = 30
    frames: int = 64
    clips: int = 600
    finetuned_dir: Path | None = None
    progress: bool = True
