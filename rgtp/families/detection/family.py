"""The detection family: a ViTDet-style backbone with a simple feature pyramid and an FCOS
head (or a user's head), on video frames.

Around the stages: `embed` (a frame -> z_0 and tokens) and `head` (the maintained backbone
map -> boxes and scores before NMS). Per stream: one frame per step; the stream keeps the
backbone map; s_L covers the tokens under boxes scoring above the threshold; a step returns
detections in the input frame's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from rgtp.core.rollout import detection_target
from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.families.detection.boxes import (
    Detections,
    check_postprocess,
    detections_to_frame,
    postprocess,
)
from rgtp.families.detection.checkpoints import FORMATS, load_weights
from rgtp.families.detection.config import DETECTOR_CONFIGS, DetectorConfig
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.flops import CONVENTIONS
from rgtp.families.detection.head_io import (
    as_nchw,
    check_user_head,
    head_boxes_scores,
    head_feeds,
)
from rgtp.package.family import GraphRunner, Prediction, StepMarks, StepResult
from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec


class HeadOutputError(ValueError):
    """A user head (`Stream.step(frame, head=...)`) returned something that is not
    detections. The frame is refused and the stream is unchanged."""


class EmbedStage(nn.Module):
    """frame (1, 3, S, S) RGB in [0, 255] -> patches z_0 (N, C), tokens (N, C)."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.patch_embed = detector.backbone.patch_embed
        self.register_buffer("pixel_mean", detector.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", detector.pixel_std.clone(), persistent=False)
        # Interpolated once here so that graphs carry the final table, not a resize op.
        pos = detector.backbone.abs_pos().detach().flatten(1, 2)[0]
        self.register_buffer("pos", pos.clone(), persistent=False)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.patch_embed((frame - self.pixel_mean) / self.pixel_std)
        patches = patches.flatten(1, 2)[0]
        return patches, patches + self.pos


class HeadStage(nn.Module):
    """out_map (N, C) -> boxes (M, 4) pixels, scores (M, num_classes)."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector
        self.grid = detector.cfg.backbone.grid

    def forward(self, out_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = out_map.view(1, self.grid, self.grid, out_map.shape[1])
        boxes, scores = self.detector.head_from_map(fmap)
        return boxes[0], scores[0]


def num_locations(config: DetectorConfig) -> int:
    """M, the number of head locations over all pyramid levels."""
    b = config.backbone
    return sum((b.grid * int(s * 4) // 4) ** 2 for s in config.head.scale_factors)


@dataclass
class FrameResult(StepResult):
    """A detector's step: `StepResult` plus its detections, in the input frame's pixels,
    clipped to the frame."""

    detections: Detections = field(kw_only=True)

    output_file: ClassVar[str] = "detections"  # what `rgtp run` writes the outputs to

    def output_json(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        return {"detections": self.detections.to_list(tuple(class_names))}

    def marks(self, class_names: Sequence[str] = (), score_threshold: float = 0.3) -> StepMarks:
        """What a picture of the frame shows (`rgtp.viz`): the boxes scoring at least
        `score_threshold`, labelled with `class_names` and the score, coloured by class."""
        dets = self.detections
        boxes = []
        for box, score, label in zip(
            dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
        ):
            if score >= score_threshold:
                name = class_names[label] if label < len(class_names) else str(label)
                boxes.append((tuple(box), f"{name} {score:.2f}", label))
        return StepMarks("frame", boxes=boxes)


@dataclass(frozen=True)
class DetectionOptions:
    """A detector stream's post-processing (`StreamOptions.task`): scores below
    `score_threshold` dropped, NMS at IoU `nms_iou`, at most `max_detections`."""

    score_threshold: float = 0.02
    nms_iou: float = 0.6
    max_detections: int = 100

    def __post_init__(self) -> None:
        check_postprocess(self.score_threshold, self.nms_iou, self.max_detections)


class DetectionTask:
    """Per stream: rgtp's or the package's head graph, or a user's callable, then NMS."""

    frames_per_step = 1

    def __init__(self, plan: StagePlan, options: Any) -> None:
        self.plan, self.options = plan, options
        self.post = DetectionOptions(**options.task)

    def embed_feeds(self, frames: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        (frame,) = frames
        return {"frame": frame}

    def predict(self, out_map: torch.Tensor, run: GraphRunner, user_head: Any) -> Prediction:
        grid, opts = self.plan.encoder.grid, self.options
        if user_head is not None:
            run.check_finite()  # the user's code sees no NaN map
            dets = user_detections(user_head(as_nchw(out_map, grid)), out_map.device)
        else:
            if self.plan.head == "none":
                raise ValueError(
                    "this package has no head (exported with --head none): pass your own, "
                    "stream.step(frame, head=my_head), see the README's 'Your own head'"
                )
            spec = self.plan.head_spec()
            head = run("head", head_feeds(spec, out_map, grid))
            run.check_finite()
            boxes, scores = head_boxes_scores(spec, head)
            post = self.post
            dets = postprocess(
                boxes, scores, post.score_threshold, post.nms_iou, post.max_detections
            )
        pruning = opts.pruning or self.plan.config.pruning
        target = detection_target(
            dets.boxes, dets.scores, grid, self.plan.encoder.patch_size, pruning.target_threshold
        )
        return Prediction(dets, target)

    def commit(self, prediction: Prediction) -> None:
        """Nothing but the maintained map (the stream's) outlives a detector's step."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def result(self, common: dict[str, Any], prediction: Prediction, geometry: Any) -> FrameResult:
        return FrameResult(**common, detections=detections_to_frame(geometry, prediction.output))


def user_detections(out: object, device: torch.device) -> Detections:
    """What a user head returned, as Detections; HeadOutputError for anything else."""
    if isinstance(out, Detections):
        boxes, scores, labels = out.boxes, out.scores, out.labels
    elif isinstance(out, tuple | list) and len(out) in (2, 3):
        boxes, scores = out[0], out[1]
        labels = out[2] if len(out) == 3 else None
    else:
        raise HeadOutputError(
            "your head must return (boxes (D, 4), scores (D,)[, labels (D,)]) or Detections; "
            f"it returned {type(out).__name__}"
        )
    try:
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
        scores = torch.as_tensor(scores, dtype=torch.float32, device=device)
        d = scores.shape[0] if scores.ndim == 1 else -1
        labels = (
            torch.zeros(max(d, 0), dtype=torch.int64, device=device)
            if labels is None
            else torch.as_tensor(labels, device=device)
        )
    except (TypeError, ValueError, RuntimeError) as e:
        raise HeadOutputError(f"your head returned values that are not tensors ({e})") from e
    if boxes.shape != (d, 4) or labels.shape != (d,):
        raise HeadOutputError(
            "your head must return boxes (D, 4), scores (D,) and labels (D,) of one length D; "
            f"got {tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    if not (boxes.isfinite().all() and scores.isfinite().all()):
        raise HeadOutputError("your head returned NaN or Inf boxes or scores")
    # Scores are compared with probability thresholds (the pruning target's, the
    # application's) and labels index classes: logits or fractional labels would be read
    # as something they are not, so they are refused rather than clamped or truncated.
    if d > 0:
        lo, hi = (float(v) for v in torch.aminmax(scores))
        if lo < 0 or hi > 1:
            raise HeadOutputError(
                f"your head's scores must be probabilities in [0, 1]; they span [{lo:g}, "
                f"{hi:g}] (logits? apply a sigmoid or softmax in your head)"
            )
        fractional = labels.is_floating_point() and not bool((labels == labels.round()).all())
        if labels.dtype == torch.bool or fractional:
            odd = labels[labels != labels.round()] if fractional else labels
            raise HeadOutputError(
                "your head's labels must be integer class indices; got "
                f"{str(labels.dtype).removeprefix('torch.')} values such as {odd[:3].tolist()}"
            )
        if int(labels.min()) < 0:
            raise HeadOutputError(
                f"your head's labels must be class indices >= 0; got {int(labels.min())}"
            )
    return Detections(boxes, scores, labels.to(torch.int64))


class DetectionFamily:
    name = "detection"
    config_type = DetectorConfig
    configs = DETECTOR_CONFIGS
    options_type = DetectionOptions
    # What turns the maintained backbone map into boxes and scores: rgtp's own FCOS head, a
    # user's ONNX head (its interface read from the file at export), or none (the
    # application runs its own head and hands the runtime its detections).
    heads = ("rgtp", "onnx", "none")
    weight_formats = FORMATS
    flops_conventions = CONVENTIONS
    tools = "rgtp.families.detection.tools"

    def build(self, config: DetectorConfig) -> Detector:
        return Detector(config)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        self.load_checkpoint(model, path, "rgtp", strict=True)

    def load_checkpoint(self, model: nn.Module, path: Path, fmt: str, strict: bool) -> Any:
        return load_weights(model, path, fmt, strict=strict)

    def encoder(self, model: nn.Module) -> nn.Module:
        return model.backbone

    def check_plan(self, plan: StagePlan) -> None:
        if plan.user_head is not None:
            check_user_head(plan.user_head, plan.encoder.grid, plan.dim)

    def embed_spec(self, plan: StagePlan) -> GraphSpec:
        s, n, c = plan.encoder.img_size, plan.num_tokens, plan.dim
        return GraphSpec(
            "embed",
            (TensorSpec("frame", (1, 3, s, s), "float32"),),
            (TensorSpec("patches", (n, c), "float32"), TensorSpec("tokens", (n, c), "float32")),
        )

    def head_spec(self, plan: StagePlan) -> GraphSpec:
        if plan.user_head is not None:
            return GraphSpec("head", plan.user_head.inputs, plan.user_head.outputs)
        n, c, m = plan.num_tokens, plan.dim, num_locations(plan.config)
        return GraphSpec(
            "head",
            (TensorSpec("out_map", (n, c), "float32"),),
            (
                TensorSpec("boxes", (m, 4), "float32"),
                TensorSpec("scores", (m, plan.config.head.num_classes), "float32"),
            ),
        )

    def extra_specs(self, plan: StagePlan) -> dict[str, GraphSpec]:
        return {}

    def modules(self, model: nn.Module, plan: StagePlan) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"embed": EmbedStage(model)}
        if plan.head == "rgtp":
            out["head"] = HeadStage(model)
        return out

    def new_task(self, plan: StagePlan, options: Any) -> DetectionTask:
        return DetectionTask(plan, options)

    def synthetic_frames(self, config: DetectorConfig, count: int) -> list[np.ndarray]:
        """A held-out SynthVID sequence of `count` frames at the model's input side."""
        size = config.encoder.img_size
        seq = generate_sequence(heldout_seeds(1)[0], SynthVIDConfig(size=size, num_frames=count))
        return list(seq.frames)


DETECTION = DetectionFamily()
