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

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

if TYPE_CHECKING:  # types only: the plan looks its family up here
    from rgtp.package.plan import GraphSpec, StagePlan


@dataclass(frozen=True)
class FrameGeometry:
    """How a frame of height x width pixels sits in the model input: the resized frame fills
    the top-left corner, model pixel (x, y) is frame pixel (x * sx, y * sy)."""

    height: int
    width: int
    sx: float
    sy: float

    def boxes_to_frame(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (D, 4) x1, y1, x2, y2 in model-input pixels -> frame pixels, clipped to the
        frame, and which of them keep an area (D,) bool (the others lie wholly in the
        letterbox padding or off the frame)."""
        factor = torch.tensor([self.sx, self.sy, self.sx, self.sy], device=boxes.device)
        limit = torch.tensor([self.width, self.height] * 2, device=boxes.device)
        boxes = torch.minimum((boxes * factor).clamp(min=0), limit)
        return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


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


# An application's own head, called on a step's maintained output instead of the package's
# (a detector's: the backbone map (1, C, H, W) -> its final detections; `Task.predict`).
UserHead = Callable[[torch.Tensor], object]


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

    # A family's result adds `output_file` and `output_json(class_names)` (what `rgtp run`
    # writes) and `marks(class_names, score_threshold) -> StepMarks` (what `rgtp.viz` draws).


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the frame's pixels


@dataclass(frozen=True)
class StepMarks:
    """What a picture of one step shows besides the kept tokens and the importance
    (`rgtp.viz` draws it; a family's step result says it with `marks`).

    unit: what one step is ("frame", "time step"); boxes: (box, text, colour index) drawn on
    the frame; caption: one line about the whole frame (a classifier's top class), or None;
    caption_color: its colour index (None: white, no class).
    """

    unit: str
    boxes: list[tuple[Box, str, int]] = field(default_factory=list)
    caption: str | None = None
    caption_color: int | None = None


class Task(Protocol):
    """One stream's family-specific part (a new one per stream and per reset)."""

    frames_per_step: int  # frames one embed call consumes (a tubelet's depth)

    def embed_feeds(self, frames: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model-input frames (1, 3, S, S) of one step -> the embed graph's feeds."""
        ...

    def predict(
        self, out_map: torch.Tensor, run: GraphRunner, user_head: UserHead | None
    ) -> Prediction:
        """The maintained output (E + N, C) -> the step's prediction. Changes nothing."""
        ...

    def commit(self, prediction: Prediction) -> None:
        """Take `prediction.state` as the task's state (the step succeeded)."""
        ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The task's state, by name (what a test compares to tell the stream unchanged)."""
        ...

    def result(
        self, common: dict[str, Any], prediction: Prediction, geometry: FrameGeometry
    ) -> Any:
        """The step's result: `StepResult` fields `common` plus the family's output."""
        ...


class Family(Protocol):
    """A model family: what the shared layers (export, engines, runtime, serving, CLI) ask of
    a model. Made known with `register_family` or an entry point (`ENTRY_POINT_GROUP`)."""

    name: str
    config_type: Any  # the config class: from_dict, to_dict
    configs: Mapping[str, Any]  # named configurations (`get_config`)
    options_type: type  # a dataclass: its task options (`StreamOptions.task`), checked
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

    def check_plan(self, plan: StagePlan) -> None:
        """ValueError for a plan this family cannot run (e.g. a user head graph whose
        interface it cannot read); called when the plan is made."""
        ...

    def embed_spec(self, plan: StagePlan) -> GraphSpec: ...

    def head_spec(self, plan: StagePlan) -> GraphSpec: ...

    def extra_specs(self, plan: StagePlan) -> dict[str, GraphSpec]: ...

    def modules(self, model: nn.Module, plan: StagePlan) -> dict[str, nn.Module]:
        """The modules of the embed graph, the head (rgtp's own) and the extra graphs."""
        ...

    def new_task(self, plan: StagePlan, options: Any) -> Task:
        """A stream's task; `options` are its `StreamOptions` (`options.task` the family's
        own, as `options_type` fields: ValueError or TypeError if they are not)."""
        ...


# What a family may offer besides running a package, each optional (a plug-in that only runs
# packages has none; the registry's helpers below read them with `getattr`):
#   weight_formats     the checkpoint namings `load_checkpoint` reads, "auto" first
#   flops_conventions  the FLOPs conventions its `flops_report` tool counts in
#   synthetic_frames   (config, count) -> `count` frames of held-out synthetic video, (S, S, 3)
#                      uint8 RGB: what `rgtp run --synthetic` feeds a package
#   tools              the dotted name of its tools module: training, evaluation, the FLOPs
#                      report, the demo (`tool`). They drive the runtime, so they sit above
#                      it, in the family's `tools/` folder, and load when a command asks.
# A tools module's functions, each optional:
#   train_model(name, settings: dict, out: Path, progress: bool) -> str (what was done)
#   evaluate_model(model, request: rgtp.eval.request.EvalRequest) -> (title, table, records)
#   flops_report(name, size, k, reset_every, radius, reset, prune_from, convention)
#       -> (figures, table)
#   run_demo(out, k_fraction: float | None, sizes: dict, progress: bool) -> dict
#   finetune(model, weights: Path | None, settings: dict, out: Path | None, progress) -> str
DEFAULT_WEIGHT_FORMATS = ("auto", "rgtp")


# Families are plug-ins: an installed distribution declares its own under this entry-point
# group (rgtp's two in pyproject.toml), and `family_named` loads the one a package names the
# first time it is asked for. A family defined at run time (a test's, a notebook's) is
# handed to `register_family` instead.
ENTRY_POINT_GROUP = "rgtp.families"
# The family of a config dictionary without one: packages exported before there were families.
UNNAMED_FAMILY = "detection"

_REGISTERED: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make `family` known by its name (to packages, `get_config`, the CLI); returns it.
    A second, different family of the same name is refused."""
    known = _REGISTERED.get(family.name)
    if known is not None and known is not family:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    _REGISTERED[family.name] = family
    return family


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def families() -> dict[str, Family]:
    """Every family: the registered ones and the installed ones, by name."""
    for name, ep in _entry_points().items():
        if name not in _REGISTERED:
            register_family(ep.load())
    return dict(_REGISTERED)


def family_named(name: str) -> Family:
    if name not in _REGISTERED:
        ep = _entry_points().get(name)
        if ep is None:
            raise ValueError(
                f"unknown model family {name!r}; choose from {sorted(families())} (a family "
                f"is installed under the {ENTRY_POINT_GROUP!r} entry points, or registered "
                "with register_family)"
            )
        register_family(ep.load())
    return _REGISTERED[name]


def family_of(config: FamilyConfig) -> Family:
    """The family of a model config (`DetectorConfig`, `ViViTConfig`)."""
    return family_named(config.family)


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """A config from its `to_dict()` (a manifest's `config`)."""
    return family_named(data.get("family", UNNAMED_FAMILY)).config_type.from_dict(dict(data))


def model_names() -> list[str]:
    """The named configurations of every family."""
    return sorted(name for f in families().values() for name in f.configs)


def get_config(name: str, img_size: int | None = None) -> Any:
    """The named configuration (of whichever family names it), optionally at another input
    size."""
    for family in families().values():
        if name in family.configs:
            cfg = family.configs[name]
            break
    else:
        raise ValueError(f"unknown model {name!r}; choose from {model_names()}")
    if img_size is not None and img_size != cfg.encoder.img_size:
        # the encoder is one of the config's fields (a detector's `backbone`, ViViT's `spatial`)
        field = next(f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is cfg.encoder)
        cfg = dataclasses.replace(
            cfg, **{field: dataclasses.replace(cfg.encoder, img_size=img_size)}
        )
    return cfg


def weight_formats() -> tuple[str, ...]:
    """Every checkpoint naming some family reads ("auto" first)."""
    names = (getattr(f, "weight_formats", DEFAULT_WEIGHT_FORMATS) for f in families().values())
    return tuple(dict.fromkeys(n for formats in names for n in formats))


def flops_conventions() -> tuple[str, ...]:
    """Every FLOPs convention some family counts in."""
    names = (getattr(f, "flops_conventions", ()) for f in families().values())
    return tuple(dict.fromkeys(n for conventions in names for n in conventions))


def tool(config: FamilyConfig, name: str) -> Callable[..., Any]:
    """The tool `name` (`train_model`, `evaluate_model`, `flops_report`, `run_demo`,
    `finetune`) of the family of `config`; ValueError if the family has none."""
    family = family_of(config)
    module = getattr(family, "tools", None)
    found = getattr(importlib.import_module(module), name, None) if module else None
    if found is None:
        raise ValueError(f"{config.name} (a {family.name} model) has no {name}")
    return found


def shipped_weights(name: str) -> Path | None:
    """Path of the weights shipped in the package for the named configuration, if any."""
    path = resources.files("rgtp") / "weights" / f"{name}.safetensors"
    return Path(str(path)) if path.is_file() else None
