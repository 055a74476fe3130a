"""The pruned frame loop of one video stream (ALGORITHM §4), driving engine calls.

One frame, in order: embed all tokens; on a reset frame keep all N, otherwise track last
frame's importance onto this frame, choose K and keep the top-K; gather kept tokens; run the
stages; write the kept tokens into the output map; run the head on the full map; NMS; then
rollout from this frame's detections gives the importance that guides the next frame.

A frame is a transaction: the frame is checked before anything runs, the stages' fresh
keys, values and attention rows are written into the caches only once every engine output
of the frame is finite and post-processing and rollout have succeeded. A frame that fails
anywhere leaves the stream as it was, so the next frame runs as if it had never been given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rgtp.core.checks import check_int
from rgtp.core.rollout import detection_target, pool_attention_rows, token_importance
from rgtp.core.selection import FixedKeep, KeepPolicy, is_reset_frame, select_tokens
from rgtp.core.tracking import check_radius, track
from rgtp.engines.base import EngineError
from rgtp.models.boxes import Detections, check_postprocess, postprocess
from rgtp.models.config import PruningConfig
from rgtp.models.head_io import as_nchw, head_boxes_scores, head_feeds
from rgtp.runtime.frames import check_frame_options, to_model_input
from rgtp.runtime.state import StreamState
from rgtp.runtime.timing import PartTimer

if TYPE_CHECKING:
    from rgtp.runtime.pipeline import Pipeline


class EngineOutputError(EngineError):
    """An engine returned NaN or Inf. The frame is refused and the stream is unchanged."""


class StreamBusyError(RuntimeError):
    """A stream was stepped from a second thread while a frame was running."""


class HeadOutputError(ValueError):
    """A user head (`Stream.step(frame, head=...)`) returned something that is not
    detections. The frame is refused and the stream is unchanged."""


# A user's head: the maintained backbone map (1, C, H, W) -> its final detections in
# model-input pixels: (boxes (D, 4), scores (D,)) or (boxes, scores, labels (D,)), or
# Detections. Its own post-processing (NMS) is done; rgtp forms s_L from what it returns.
UserHead = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream settings, checked when the stream is opened; defaults are the authors'
    ViTDet configuration.

    policy: how many tokens to keep (None keeps all: the dense model);
    reset_every: R, frames between dense reset frames (0: only frame 0);
    radius: token tracking window r, 0..grid-1 (larger for faster motion);
    pruning: rollout blocks, tracking similarity and union, novelty share, s_L threshold;
        None takes the model's own (`DetectorConfig.pruning`, carried in the package manifest);
    score_threshold, nms_iou, max_detections: detection post-processing;
    resize: how frames of another size than the model input are fitted: "letterbox"
        (longer side to the input size, padded bottom/right), "stretch", or "refuse";
    float_scale: float frames are read as pixel = value * float_scale (255.0 for [0, 1]);
        None refuses float frames.
    """

    policy: KeepPolicy | None = None
    reset_every: int = 8
    radius: int = 1
    pruning: PruningConfig | None = None
    score_threshold: float = 0.02
    nms_iou: float = 0.6
    max_detections: int = 100
    resize: str = "letterbox"
    float_scale: float | None = None

    def __post_init__(self) -> None:
        if self.policy is not None and not all(
            callable(getattr(self.policy, m, None)) for m in ("choose", "check")
        ):
            raise ValueError(
                "policy must be a keep policy such as FixedKeep(77) or MassKeep(0.9), or None "
                f"for the dense model; got {self.policy!r}"
            )
        check_int("reset_every", self.reset_every, 0)
        check_int("tracking radius", self.radius, 0)  # bounded by the grid at stream creation
        if self.pruning is not None and not isinstance(self.pruning, PruningConfig):
            raise ValueError(f"pruning must be a PruningConfig or None, got {self.pruning!r}")
        check_postprocess(self.score_threshold, self.nms_iou, self.max_detections)
        check_frame_options(self.resize, self.float_scale)


@dataclass
class FrameResult:
    """What one step produced.

    detections: in the input frame's pixels, clipped to the frame; keep: (K,) kept token
    indices (CPU); importance: s_0 (N,) of this frame, which guides the next; tracked: ŝ (N,)
    that chose this frame's tokens (None on reset frames); timings: milliseconds per part.
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
    """One video stream over a shared pipeline. One thread at a time: a second thread that
    steps it while a frame runs gets StreamBusyError; give each thread its own stream."""

    def __init__(self, pipeline: Pipeline, options: StreamOptions) -> None:
        self.pipeline = pipeline
        self.options = options
        plan = pipeline.plan
        self.policy = options.policy or FixedKeep(plan.num_tokens)
        self.policy.check(plan.buckets)  # fail at creation, not on the first pruned frame
        check_radius(options.radius, plan.config.backbone.grid)
        self.pruning = options.pruning or plan.config.pruning
        self.rollout_blocks = self.pruning.blocks(plan.global_blocks)
        self.pool = self.pruning.rollout_pool
        if plan.config.backbone.grid % self.pool:
            raise ValueError(
                f"rollout_pool {self.pool} does not divide the {plan.config.backbone.grid}-token "
                "grid side; choose a divisor of it (1: no pooling)"
            )
        self.state = self._new_state()
        self._busy = threading.Lock()

    def _new_state(self) -> StreamState:
        return StreamState(self.pipeline.plan, self.rollout_blocks, self.pipeline.device, self.pool)

    @property
    def out_map(self) -> torch.Tensor:
        """The maintained backbone output map (N, C)."""
        return self.state.out_map

    @property
    def feature_map(self) -> torch.Tensor:
        """A copy of the maintained backbone output map as a conv head reads it,
        (1, C, H, W)."""
        grid = self.pipeline.plan.config.backbone.grid
        return as_nchw(self.state.out_map, grid)

    def reset(self) -> None:
        """Forget the stream's history: the next frame is a dense reset frame at index 0."""
        with self._exclusive():
            self.state = self._new_state()

    @torch.inference_mode()
    def step(self, frame: object, head: UserHead | None = None) -> FrameResult:
        """Process one frame: RGB (H, W, 3) uint8, or float with `StreamOptions.float_scale`
        (see `rgtp.runtime.frames`). Raises FrameError for a frame outside that contract and
        EngineOutputError for non-finite engine outputs; either way the stream is unchanged.

        head: your own detection head instead of the package's (required for a package
        exported with `--head none`), called once per frame on the maintained backbone map
        (1, C, H, W); it returns final detections in model-input pixels (see `UserHead`). If
        it raises, or returns something else, the stream is unchanged."""
        if head is None and self.pipeline.plan.head == "none":
            raise ValueError(
                "this package has no head (exported with --head none): pass your own, "
                "stream.step(frame, head=my_head), see the README's 'Your own head'"
            )
        with self._exclusive():
            return self._step(frame, head)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Non-blocking: waiting would hide the bug of two threads feeding one video.
        if not self._busy.acquire(blocking=False):
            raise StreamBusyError(
                "this stream is processing a frame in another thread; a stream holds one "
                "video's state, so give each thread its own stream (pipeline.new_stream())"
            )
        try:
            yield
        finally:
            self._busy.release()

    def _step(self, frame: object, user_head: UserHead | None) -> FrameResult:
        plan, engines, opts, st = (
            self.pipeline.plan,
            self.pipeline.engines,
            self.options,
            self.state,
        )
        bb = plan.config.backbone
        timer = PartTimer(self.pipeline.device)
        checks = OutputChecks()

        with timer("prepare"):
            pixels, geometry = to_model_input(
                frame,
                bb.img_size,
                self.pipeline.device,
                opts.resize,
                opts.float_scale,
                plan.config.pixel_mean,
            )
        with timer("embed"):
            emb = checks.add("embed", engines.embed.run({"frame": pixels}))
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

        # A stage reads only its own blocks' caches, so this frame's rows can wait for the
        # commit: earlier stages of the frame never need them.
        fresh: dict[str, torch.Tensor] = {}
        for i in range(len(plan.stages)):
            feeds = {"tokens": tokens if plan.takes_all_tokens(i) else x, "keep": keep}
            for b in plan.cached_blocks(i):
                feeds[f"k_cache_{b}"] = st.k_cache[b]
                feeds[f"v_cache_{b}"] = st.v_cache[b]
            engine = engines.stage(i, k)
            with timer("stages"):
                out = checks.add(engine.spec.name, engine.run(feeds))
            x = out.pop("tokens_out")
            fresh |= out
        with timer("scatter"):
            out_map = st.out_map.index_copy(0, keep, x)

        if user_head is not None:
            checks.raise_if_not_finite()
            with timer("head"):
                dets = user_detections(user_head(as_nchw(out_map, bb.grid)), tokens.device)
        else:
            spec = engines.head.spec
            with timer("head"):
                head = checks.add("head", engines.head.run(head_feeds(spec, out_map, bb.grid)))
            checks.raise_if_not_finite()
            with timer("postprocess"):
                boxes, scores = head_boxes_scores(spec, head)
                dets = postprocess(
                    boxes, scores, opts.score_threshold, opts.nms_iou, opts.max_detections
                )
        with timer("rollout"):
            target = detection_target(
                dets.boxes, dets.scores, bb.grid, bb.patch_size, self.pruning.target_threshold
            )
            importance = self._rollout(keep, fresh, target)

        with timer("scatter"):  # the commit: nothing below can fail on checked tensors
            for b in range(bb.depth):
                if b == plan.dense_block:
                    continue
                st.k_cache[b].index_copy_(0, keep, fresh[f"k_new_{b}"])
                st.v_cache[b].index_copy_(0, keep, fresh[f"v_new_{b}"])
            st.out_map = out_map
            st.prev_patches, st.prev_importance = patches, importance
        result = FrameResult(
            index=st.frame_index,
            reset=reset,
            k=k,
            keep=keep.cpu(),
            detections=geometry.detections_to_frame(dets),
            importance=importance,
            tracked=tracked,
            timings=timer.summary(),
        )
        st.frame_index += 1
        return result

    def _rollout(
        self, keep: torch.Tensor, fresh: dict[str, torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        """s_0 (N,) by rollout through this frame's attention rows of the kept tokens and the
        buffered rows of the others (pooled first with `rollout_pool`). Rollout reads the
        whole buffers, so the fresh rows go in first; should rollout fail, the rows they
        replaced are put back."""
        grid = self.pipeline.plan.config.backbone.grid
        rows = self.state.attn_rows
        written: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for g in self.rollout_blocks:
            if self.pool == 1:
                written[g] = (keep, fresh[f"attn_{g}"])
            else:
                written[g] = pool_attention_rows(fresh[f"attn_{g}"], keep, grid, self.pool)
        replaced = {g: rows[g].index_select(0, where) for g, (where, _) in written.items()}
        try:
            for g, (where, new) in written.items():
                rows[g].index_copy_(0, where, new)
            return token_importance([rows[g] for g in self.rollout_blocks], target, grid, self.pool)
        except BaseException:
            for g, old in replaced.items():
                rows[g].index_copy_(0, written[g][0], old)
            raise


class OutputChecks:
    """Finiteness of every engine output of a frame, checked once before anything is
    committed. A tensor's sum is non-finite if any element is (or if the values overflow
    float32 together, which no sane activation does), and sums cost a tenth of isfinite."""

    def __init__(self) -> None:
        self.sums: list[tuple[str, str, torch.Tensor]] = []

    def add(self, graph: str, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.sums += [(graph, n, t.sum()) for n, t in outputs.items() if t.is_floating_point()]
        return outputs

    def raise_if_not_finite(self) -> None:
        finite = torch.stack([s for _, _, s in self.sums]).isfinite().cpu()
        if not bool(finite.all()):
            bad = [(g, n) for (g, n, _), ok in zip(self.sums, finite, strict=True) if not ok]
            first = bad[0][0]  # later engines only inherit its NaNs
            names = ", ".join(n for g, n in bad if g == first)
            raise EngineOutputError(
                f"engine {first} returned NaN or Inf ({names}); the frame was refused and the "
                "stream is unchanged"
            )


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
            else torch.as_tensor(labels, device=device).to(torch.int64)
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
    return Detections(boxes, scores, labels)
