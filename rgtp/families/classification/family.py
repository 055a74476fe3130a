"""The classification family: the ViViT factorised encoder on a video, one time step (a
tubelet of frames) at a time.

Around the stages: `embed` (one time step's frames -> z_0 of the N patches, and the CLS
token followed by the patch tokens), `head` (the maintained spatial output -> the step's
normalised CLS feature) and `temporal` (the CLS features of the last s steps -> class
logits; tiny, so it runs on every step's full sequence). Pruning runs on the spatial encoder
only; the CLS token is the one prefix token: always kept, not counted in K.

Per stream: `tubelet` frames per step; the stream keeps, besides the caches, the CLS
features of the last s steps; s_L is the CLS query row; a step returns class scores once s
steps have been seen (the scores of the clip of the last s steps), None before.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from rgtp.core.rollout import cls_target
from rgtp.families.classification.config import VIVIT_CONFIGS, ViViTConfig
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.vivit import ViViT
from rgtp.families.classification.weights import FORMATS, load_vivit_weights
from rgtp.package.family import GraphRunner, Prediction, StepMarks, StepResult
from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec


class StepEmbed(nn.Module):
    """frames (1, 3, t, S, S) RGB in [0, 255] -> patches z_0 (N, C), tokens (1 + N, C)."""

    def __init__(self, model: ViViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, tokens = self.model.embed(frames)
        return patches[0], tokens[0]


class StepHead(nn.Module):
    """Spatial output (1 + N, C) -> the step's normalised CLS feature (1, C)."""

    def __init__(self, model: ViViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.cls_features(tokens[None])


class Temporal(nn.Module):
    """CLS features of s steps (s, C) -> class logits (L,)."""

    def __init__(self, model: ViViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.temporal_head(features[None])[0]


@dataclass
class ClassResult(StepResult):
    """A classifier's step: `StepResult` plus `scores` (L,) class probabilities of the clip
    of the last s steps (None until s steps have been seen) and `feature` (C,), this step's
    CLS feature."""

    scores: torch.Tensor | None = field(kw_only=True)
    feature: torch.Tensor = field(kw_only=True)
    class_names: tuple[str, ...] = field(kw_only=True, default=())

    output_file: ClassVar[str] = "classes"  # what `rgtp run` writes the outputs to

    def output_json(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """The top class and every probability (None before the first full clip)."""
        top = self.top
        return {
            "top": None if top is None else top[0],
            "probability": None if top is None else top[1],
            "scores": None if self.scores is None else self.scores.tolist(),
        }

    def marks(self, class_names: Sequence[str] = (), score_threshold: float = 0.3) -> StepMarks:
        """What a picture of the time step shows (`rgtp.viz`): the top class over the clip
        and its probability as a caption in the class's colour, "—" before the first full
        clip. The result names its classes itself; the arguments are the detector's."""
        top = self.top
        caption = "—" if top is None else f"{top[0]} {top[1]:.2f}"
        return StepMarks("time step", caption=caption, caption_color=self.label)

    @property
    def label(self) -> int | None:
        """The top class, or None before the first full clip."""
        return None if self.scores is None else int(self.scores.argmax())

    @property
    def top(self) -> tuple[str, float] | None:
        """(name, probability) of the top class, or None before the first full clip."""
        if self.scores is None:
            return None
        i = int(self.scores.argmax())
        name = self.class_names[i] if self.class_names else str(i)
        return name, float(self.scores[i])


@dataclass(frozen=True)
class ClassificationOptions:
    """A classifier stream has no options of its own (`StreamOptions.task`)."""


class ClassificationTask:
    """Per stream: the CLS features of the last s steps, and the temporal graph on them."""

    def __init__(self, plan: StagePlan, options: Any) -> None:
        ClassificationOptions(**options.task)  # none: refuses any
        self.plan = plan
        self.frames_per_step = plan.encoder.tubelet
        self.num_steps = plan.config.num_steps
        self.features: torch.Tensor | None = None  # (≤ s, C), oldest first

    def embed_feeds(self, frames: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"frames": torch.stack(list(frames), dim=2)}  # t x (1, 3, S, S) -> (1, 3, t, S, S)

    def predict(self, out_map: torch.Tensor, run: GraphRunner, user_head: Any) -> Prediction:
        if user_head is not None:
            raise ValueError("a classifier takes no user head; its head is the CLS feature")
        feature = run("head", {"tokens": out_map})["feature"]
        seen = feature if self.features is None else torch.cat([self.features, feature])
        seen = seen[-self.num_steps :]
        logits = None
        if seen.shape[0] == self.num_steps:
            logits = run("temporal", {"features": seen})["logits"]
        run.check_finite()
        target = cls_target(self.plan.prefix + self.plan.num_tokens, 0, out_map.device)
        return Prediction((feature[0], logits), target, seen)

    def commit(self, prediction: Prediction) -> None:
        self.features = prediction.state

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.features is None else {"features": self.features}

    def result(self, common: dict[str, Any], prediction: Prediction, geometry: Any) -> ClassResult:
        feature, logits = prediction.output
        return ClassResult(
            **common,
            scores=None if logits is None else logits.softmax(-1).cpu(),
            feature=feature,
            class_names=self.plan.config.class_names,
        )


class ClassificationFamily:
    name = "classification"
    config_type = ViViTConfig
    configs = VIVIT_CONFIGS
    options_type = ClassificationOptions
    heads = ("rgtp",)
    weight_formats = FORMATS
    flops_conventions = ("paper", "executed")  # the same count: no windowed blocks
    tools = "rgtp.families.classification.tools"

    def build(self, config: ViViTConfig) -> ViViT:
        return ViViT(config)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        self.load_checkpoint(model, path, "rgtp", strict=True)

    def load_checkpoint(self, model: nn.Module, path: Path, fmt: str, strict: bool) -> Any:
        """rgtp's own ViViT weights or the authors' ("eventful"), every tensor; or a timm
        image ViT into the spatial encoder, whose temporal transformer and classifier then
        keep their values (only without `strict`). See `load_vivit_weights`."""
        return load_vivit_weights(model, path, fmt, strict)

    def encoder(self, model: nn.Module) -> nn.Module:
        return model.spatial

    def check_plan(self, plan: StagePlan) -> None:
        pass  # its one head is its own

    def embed_spec(self, plan: StagePlan) -> GraphSpec:
        enc, n, c = plan.encoder, plan.num_tokens, plan.dim
        frames = (1, 3, enc.tubelet, enc.img_size, enc.img_size)
        return GraphSpec(
            "embed",
            (TensorSpec("frames", frames, "float32"),),
            (
                TensorSpec("patches", (n, c), "float32"),
                TensorSpec("tokens", (plan.prefix + n, c), "float32"),
            ),
        )

    def head_spec(self, plan: StagePlan) -> GraphSpec:
        c = plan.dim
        return GraphSpec(
            "head",
            (TensorSpec("tokens", (plan.prefix + plan.num_tokens, c), "float32"),),
            (TensorSpec("feature", (1, c), "float32"),),
        )

    def extra_specs(self, plan: StagePlan) -> dict[str, GraphSpec]:
        s, c = plan.config.num_steps, plan.dim
        spec = GraphSpec(
            "temporal",
            (TensorSpec("features", (s, c), "float32"),),
            (TensorSpec("logits", (plan.config.num_classes,), "float32"),),
        )
        return {"temporal": spec}

    def modules(self, model: nn.Module, plan: StagePlan) -> dict[str, nn.Module]:
        return {"embed": StepEmbed(model), "head": StepHead(model), "temporal": Temporal(model)}

    def new_task(self, plan: StagePlan, options: Any) -> ClassificationTask:
        return ClassificationTask(plan, options)

    def synthetic_frames(self, config: ViViTConfig, count: int) -> list[np.ndarray]:
        """`count` frames of consecutive held-out SynthMotion clips."""
        clips = heldout_clips(-(-count // config.num_frames), data_config(config))
        return list(itertools.chain.from_iterable(c.frames for c in clips))[:count]


CLASSIFICATION = ClassificationFamily()
