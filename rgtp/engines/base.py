"""The engine protocol every backend implements, and the set of engines a pipeline drives.

Like Polygraphy's runners, every backend exposes the same small surface: an engine has a
`spec` (names, shapes, dtypes of its inputs and outputs) and `run(feeds) -> outputs`, with
torch tensors on the backend's device going in and coming out, so the runtime never
converts data between stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rgtp.models.plan import GraphSpec, StagePlan


class EngineError(RuntimeError):
    """An engine cannot be loaded or run as asked (missing bucket, bad plan, bad input)."""


class Engine(Protocol):
    spec: GraphSpec

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the graph on named inputs; returns named outputs on the same device."""
        ...


@dataclass
class EngineSet:
    """All engines of one pipeline: embed, one engine per (stage, K bucket), head."""

    plan: StagePlan
    backend: str
    device: torch.device
    embed: Engine
    head: Engine | None  # None: exported with --head none; the application runs its own
    stages: list[dict[int, Engine]]
    info: dict[str, str] = field(default_factory=dict)
    # objects the engines rely on but do not own (e.g. deserialized TensorRT engines)
    resources: list[object] = field(default_factory=list)

    def stage(self, index: int, k: int) -> Engine:
        try:
            return self.stages[index][k]
        except KeyError:
            raise EngineError(
                f"stage {index} has no engine for K={k}; buckets: {sorted(self.stages[index])}"
            ) from None


def check_feeds(spec: GraphSpec, feeds: Mapping[str, torch.Tensor]) -> None:
    """Clear error for a missing input or one of the wrong shape (static axes only)."""
    for t in spec.inputs:
        if t.name not in feeds:
            raise EngineError(f"{spec.name}: missing input {t.name!r}")
        shape = tuple(feeds[t.name].shape)
        want = t.shape
        if len(shape) != len(want) or any(
            isinstance(w, int) and w != s for w, s in zip(want, shape, strict=True)
        ):
            raise EngineError(f"{spec.name}: input {t.name!r} has shape {shape}, expected {want}")


def restrict_buckets(plan: StagePlan, buckets: Sequence[int] | None) -> StagePlan:
    """The plan with only `buckets` (plus N); every requested bucket must exist."""
    if buckets is None:
        return plan
    missing = sorted(set(buckets) - set(plan.buckets))
    if missing:
        raise EngineError(f"package has no K buckets {missing}; it has {list(plan.buckets)}")
    return dataclasses.replace(plan, buckets=tuple(buckets))
