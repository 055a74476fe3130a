"""The pipeline an evaluation runs a model on: in memory on the torch engines, else from a
package of it, reused where one is, exported where none is (`rgtp.export.ensure`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from rgtp.export.ensure import ensure_package
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline


def model_pipeline(
    model: nn.Module,
    buckets: Sequence[int],
    schedules: Sequence[Sequence[int]] = (),
    *,
    backend: str = "ort",
    device: str = "cpu",
    partition: str | None = None,
    prune_from: str | None = None,
    package: str | Path | None = None,
    progress: bool = True,
) -> Pipeline:
    """A pipeline of `model` on `backend`: torch in memory, else an exported package of
    fixed-K graphs (`package` if it holds this export, else exported there or into a
    temporary directory; stderr says which); `schedules`' K as their stages' buckets.
    `partition`, `prune_from`: None for the model's method (`StagePlan.create`)."""
    if backend == "torch":
        return Pipeline.from_model(
            model, list(buckets), partition=partition, prune_from=prune_from, schedules=schedules
        )
    plan = StagePlan.create(
        model.cfg, list(buckets), partition, prune_from=prune_from, schedules=schedules
    )
    # fixed-K graphs only: eval loads one session per (stage, K), and exports faster
    package = ensure_package(model, plan, package, symbolic=False, progress=progress)
    return Pipeline.load(package, backend=backend, device=device)
