"""The pruned frame loop of one video stream (ALGORITHM §4), driving engine calls.

One frame, in order: embed all tokens; on a reset frame keep all N, otherwise track last
frame's importance onto this frame, choose K and keep the top-K; gather kept tokens; run the
stages, writing their fresh keys/values and attention rows back into the caches; write the
kept tokens into the output map; run the head on the full map; NMS; then rollout from this
frame's detections gives the importance that guides the next frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from rgtp.core.rollout import detection_target, rollout
from rgtp.core.selection import FixedKeep, KeepPolicy, is_reset_frame, select_tokens
from rgtp.core.tracking import track
from rgtp.models.boxes import Detections, postprocess
from rgtp.models.config import PruningConfig
from rgtp.runtime.frames import to_model_input
from rgtp.runtime.state import StreamState
from rgtp.runtime.timing import PartTimer

if TYPE_CHECKING:
    from rgtp.runtime.pipeline import Pipeline


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream settings; defaults are the authors' ViTDet configuration.

    policy: how many tokens to keep (None keeps all: the dense model);
    reset_every: R, frames between dense reset frames (0: only frame 0);
    radius: token tracking window r (larger for faster motion);
    pruning: rollout blocks, tracking similarity and union, novelty share, s_L threshold;
        None takes the model's own (`DetectorConfig.pruning`, carried in the package manifest);
    score_threshold, nms_iou, max_detections: detection post-processing.
    """

    policy: KeepPolicy | None = None
    reset_every: int = 8
    radius: int = 1
    pruning: PruningConfig | None = None
    score_threshold: float = 0.02
    nms_iou: float = 0.6
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.reset_every < 0:
            raise ValueError("reset_every must be >= 0")
        if self.radius < 0:
            raise ValueError("tracking radius must be >= 0")


@dataclass
class FrameResult:
    """What one step produced.

    detections: in the input frame's pixels; keep: (K,) kept token indices (CPU);
    importance: s_0 (N,) of this frame, which guides the next; tracked: ŝ (N,) that chose
    this frame's tokens (None on reset frames); timings: milliseconds per part.
    """

    index: int
    reset: bool
    k: int
    keep: torch.Tensor
    detections: Detections
    importance: torch.Tensor
    tracked: torch.Tensor | None
    timings: dict[str, float] = field(default_factory=dict)


class Stream:
    """One video stream over a shared pipeline. Not thread-safe; use one stream per thread."""

    def __init__(self, pipeline: Pipeline, options: StreamOptions) -> None:
        self.pipeline = pipeline
        self.options = options
        plan = pipeline.plan
        self.policy = options.policy or FixedKeep(plan.num_tokens)
        self.policy.check(plan.buckets)  # fail at creation, not on the first pruned frame
        self.pruning = options.pruning or plan.config.pruning
        self.rollout_blocks = self.pruning.blocks(plan.global_blocks)
        self.state = StreamState(plan, pipeline.device)

    @property
    def out_map(self) -> torch.Tensor:
        """The maintained backbone output map (N, C)."""
        return self.state.out_map

    def reset(self) -> None:
        """Forget the stream's history: the next frame is a dense reset frame at index 0."""
        self.state = StreamState(self.pipeline.plan, self.pipeline.device)

    @torch.inference_mode()
    def step(self, frame: np.ndarray | torch.Tensor) -> FrameResult:
        """Process one RGB frame (H, W, 3) in [0, 255]."""
        plan, engines, opts, st = (
            self.pipeline.plan,
            self.pipeline.engines,
            self.options,
            self.state,
        )
        bb = plan.config.backbone
        timer = PartTimer(self.pipeline.device)

        with timer("prepare"):
            pixels, (sx, sy) = to_model_input(frame, bb.img_size, self.pipeline.device)
        with timer("embed"):
            emb = engines.embed.run({"frame": pixels})
        patches, tokens = emb["patches"], emb["tokens"]

        reset = st.prev_importance is None or is_reset_frame(st.frame_index, opts.reset_every)
        tracked = None
        with timer("select"):
            if reset:
                k = plan.num_tokens
                keep = torch.arange(k, device=tokens.device)
            else:
                tracked, similarity = track(
                    st.prev_importance,
                    st.prev_patches,
                    patches,
                    bb.grid,
                    opts.radius,
                    self.pruning.similarity,
                    self.pruning.track_union,
                )
                k = self.policy.choose(tracked, plan.buckets)
                keep = select_tokens(tracked, k, similarity, self.pruning.novelty_share)
            x = tokens.index_select(0, keep)

        for i, blocks in enumerate(plan.stages):
            feeds = {"tokens": x, "keep": keep}
            for b in blocks:
                feeds[f"k_cache_{b}"] = st.k_cache[b]
                feeds[f"v_cache_{b}"] = st.v_cache[b]
            with timer("stages"):
                out = engines.stage(i, k).run(feeds)
            with timer("scatter"):
                x = out["tokens_out"]
                for b in blocks:
                    st.k_cache[b].index_copy_(0, keep, out[f"k_new_{b}"])
                    st.v_cache[b].index_copy_(0, keep, out[f"v_new_{b}"])
                    if b in st.attn_rows:
                        st.attn_rows[b].index_copy_(0, keep, out[f"attn_{b}"])
        with timer("scatter"):
            st.out_map.index_copy_(0, keep, x)

        with timer("head"):
            head = engines.head.run({"out_map": st.out_map})
        with timer("postprocess"):
            dets = postprocess(
                head["boxes"],
                head["scores"],
                opts.score_threshold,
                opts.nms_iou,
                opts.max_detections,
            )
        with timer("rollout"):
            target = detection_target(
                dets.boxes, dets.scores, bb.grid, bb.patch_size, self.pruning.target_threshold
            )
            importance = rollout([st.attn_rows[g] for g in self.rollout_blocks], target)

        st.prev_patches, st.prev_importance = patches, importance
        result = FrameResult(
            index=st.frame_index,
            reset=reset,
            k=k,
            keep=keep.cpu(),
            detections=dets.scaled(sx, sy),
            importance=importance,
            tracked=tracked,
            timings=timer.summary(),
        )
        st.frame_index += 1
        return result
