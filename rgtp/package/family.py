"""Model families: what differs between a detector and a classifier, one module per family.

A family says which graphs surround the pruned stages (embed, head, and any further ones),
builds the modules behind them, and, per stream, what the runtime does after the stages:
which graphs turn the maintained output into a prediction, what it keeps besides the caches,
how s_L (the rollout target) is formed and what a step returns. Everything else (stage
graphs, K buckets, gather/scatter, caches, tracking, rollout, manifest, backends) is shared
and asks the family through `Family` only.

Families: `detection` (ViTDet backbone + FCOS head, `rgtp.families.detection.family`) and
`classification` (ViViT factorised encoder, `rgtp.families.classification.family`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from rgtp.package.plan import GraphSpec, StagePlan


class FamilyConfig(Protocol):
    """What the shared path reads of a model's config."""

    family: ClassVar[str]
    name: str
    pixel_mean: tuple[float, float, float]

    @property
    def encoder(self) -> Any: ...  # depth, grid, num_tokens, embed_dim, is_global, ...

    @property
    def pruning(self) -> Any: ...  # PruningConfig

    def to_dict(self) -> dict[str, Any]: ...


class GraphRunner(Protocol):
    """How a task runs the family's graphs during a step: by name, outputs checked and timed
    by the stream."""

    def __call__(
        self, graph: str, feeds: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]: ...

    def check_finite(self) -> None:
        """Raise if any engine output of the step so far is NaN or Inf."""
        ...


@dataclass
class Prediction:
    """What a task made of one step's maintained output: `output` (the family's, e.g.
    detections), `target` s_L over all E + N token rows (rollout's start), and `state`,
    the task's state after the step, committed only with the rest of the stream's."""

    output: Any
    target: torch.Tensor
    state: Any = None


@dataclass
class StepResult:
    """What every step produces, whatever the family.

    index: the time step (a frame for a detector); reset: whether it was a reset step;
    k: tokens kept (prefix tokens not counted); keep: (K,) kept patch indices (CPU);
    importance: s_0 (N,) of this step, which guides the next; tracked: ŝ (N,) that chose
    this step's tokens (None on reset steps); timings: milliseconds per part; stage_k: the
    tokens each stage ran on (k at every stage but with a keep schedule, `ScheduleKeep`).
    """

    index: int
    reset: bool
    k: int
    keep: torch.Tensor
    importance: torch.Tensor
    tracked: torch.Tensor | None
    timings: dict[str, float] = field(default_factory=dict)
    stage_k: tuple[int, ...] = ()


class Task(Protocol):
    """One stream's family-specific part (a new one per stream and per reset)."""

    frames_per_step: int  # frames one embed call consumes (a tubelet's depth)

    def embed_feeds(self, frames: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model-input frames (1, 3, S, S) of one step -> the embed graph's feeds."""
        ...

    def predict(self, out_map: torch.Tensor, run: GraphRunner, user_head: Any) -> Prediction:
        """The maintained output (E + N, C) -> the step's prediction. Changes nothing."""
        ...

    def commit(self, prediction: Prediction) -> None:
        """Take `prediction.state` as the task's state (the step succeeded)."""
        ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The task's state, by name (what a test compares to tell the stream unchanged)."""
        ...

    def result(self, common: dict[str, Any], prediction: Prediction, geometry: Any) -> Any:
        """The step's result: `StepResult` fields `common` plus the family's output."""
        ...


class Family(Protocol):
    name: str
    config_type: Any  # the config class: from_dict, to_dict
    heads: tuple[str, ...]  # what may turn the maintained output into a prediction

    def build(self, config: Any) -> nn.Module: ...

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """Load rgtp-format weights (`model.safetensors` of a package)."""
        ...

    def load_checkpoint(self, model: nn.Module, path: Path, fmt: str, strict: bool) -> Any:
        """Load a user's checkpoint (`fmt`: a naming the family reads, or "auto"); with
        `strict` False, tensors outside the encoder may be missing. Returns a LoadReport."""
        ...

    def encoder(self, model: nn.Module) -> nn.Module:
        """The module whose `cfg` and `blocks` the pruned stages run."""
        ...

    def embed_spec(self, plan: StagePlan) -> GraphSpec: ...

    def head_spec(self, plan: StagePlan) -> GraphSpec: ...

    def extra_specs(self, plan: StagePlan) -> dict[str, GraphSpec]: ...

    def modules(self, model: nn.Module, plan: StagePlan) -> dict[str, nn.Module]:
        """The modules of the embed graph, the head (rgtp's own) and the extra graphs."""
        ...

    def new_task(self, plan: StagePlan, options: Any) -> Task: ...


def _families() -> dict[str, Family]:
    from rgtp.families.classification.family import CLASSIFICATION
    from rgtp.families.detection.family import DETECTION

    return {f.name: f for f in (DETECTION, CLASSIFICATION)}


def family_named(name: str) -> Family:
    families = _families()
    try:
        return families[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose from {sorted(families)}") from None


def family_of(config: FamilyConfig) -> Family:
    """The family of a model config (`DetectorConfig`, `ViViTConfig`)."""
    return family_named(config.family)


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """A config from its `to_dict()`; one without a family is a detector's (older packages)."""
    return family_named(data.get("family", "detection")).config_type.from_dict(dict(data))
