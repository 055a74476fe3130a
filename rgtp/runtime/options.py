"""A stream's options, checked when the stream is opened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rgtp.core.checks import check_int
from rgtp.core.scene_cut import check_cut_threshold
from rgtp.core.selection import RESETS, KeepPolicy
from rgtp.models.config import PruningConfig
from rgtp.runtime.frames import check_frame_options
from rgtp.runtime.timing import TIMINGS


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream settings, checked when the stream is opened; defaults are the authors'
    ViTDet configuration.

    policy: how many tokens to keep (None keeps all: the dense model);
    reset_every: R, steps between reset steps (0: only step 0);
    reset: what a reset step keeps: "dense" (all N tokens) or "checkerboard" (the authors'
        ViViT reset: a fixed 1-in-2 checkerboard, each dropped token then taking the
        importance of its most similar kept token; needs the bucket of that size). A
        stream's first step is always dense: its caches hold nothing yet for the others;
    radius: token tracking window r, 0..grid-1 (larger for faster motion);
    pruning: rollout blocks, tracking similarity and union, novelty share, s_L threshold;
        None takes the model's own (`config.pruning`, carried in the package manifest);
    task: the family's own options by name, checked by its task when the stream opens (a
        detector's: score_threshold, nms_iou, max_detections; `Family.options_type`);
    resize: how frames of another size than the model input are fitted: "letterbox"
        (longer side to the input size, padded bottom/right), "stretch", or "refuse";
    float_scale: float frames are read as pixel = value * float_scale (255.0 for [0, 1]);
        None refuses float frames;
    timing: per-part timings of a step (`runtime.timing`): "auto" (CUDA events on a GPU,
        no synchronisation inside a step), or "sync" (wall clock, the GPU synchronised
        around every part);
    scene_cut: None (the authors' schedule, the default), or a threshold in (-1, 1): a step
        whose patch embeddings' mean cosine similarity to the previous step's falls below it
        is a scene cut and runs as a reset step at once (`core.scene_cut`). The threshold
        belongs to the backbone: 0.75 for the shipped vitdet-small; none separates the
        shipped vivit-small's cuts from its motion with margin (docs/results.md, "Scene cuts").
    """

    policy: KeepPolicy | None = None
    reset_every: int = 8
    reset: str = "dense"
    radius: int = 1
    pruning: PruningConfig | None = None
    task: Mapping[str, Any] = field(default_factory=dict, hash=False)
    resize: str = "letterbox"
    float_scale: float | None = None
    timing: str = "auto"
    scene_cut: float | None = None

    def __post_init__(self) -> None:
        if self.policy is not None and not all(
            callable(getattr(self.policy, m, None)) for m in ("choose", "check")
        ):
            raise ValueError(
                "policy must be a keep policy such as FixedKeep(77) or MassKeep(0.9), or None "
                f"for the dense model; got {self.policy!r}"
            )
        check_int("reset_every", self.reset_every, 0)
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}")
        check_int("tracking radius", self.radius, 0)  # bounded by the grid at stream creation
        if self.pruning is not None and not isinstance(self.pruning, PruningConfig):
            raise ValueError(f"pruning must be a PruningConfig or None, got {self.pruning!r}")
        check_frame_options(self.resize, self.float_scale)
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {self.timing!r}")
        if self.scene_cut is not None:
            check_cut_threshold(self.scene_cut)
