"""The pruned loop of one video stream (docs/method.md, "The pruned step"), driving engine calls;
the same for every model family (`rgtp.families`), which supplies the graphs after the stages.

One step (a frame for a detector, a tubelet of frames for ViViT), in order: embed all tokens; on a
reset step keep all N (or the checkerboard), otherwise track last step's importance onto this step,
choose K and keep the top-K; gather the kept rows (and the prefix rows, e.g. a CLS token, always);
run the stages (with a keep schedule, a stage that keeps fewer tokens than the one before keeps
those of highest importance at its first block, docs/method.md, "Keep schedules"); write the last
stage's rows into the maintained output; the family's task turns that output into a prediction and
s_L; rollout from s_L gives the importance that guides the next step.

A step is a transaction: the frame is checked before anything runs, the stages' fresh keys,
values and attention rows are written into the caches only once every engine output of the
step is finite and the prediction and rollout have succeeded. A step that fails anywhere
leaves the stream as it was, so the next frame runs as if it had never been given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from rgtp.core.rollout import (
    keep_previous,
    later_importance,
)
from rgtp.core.scene_cut import is_scene_cut
from rgtp.core.selection import (
    FixedKeep,
    checkerboard,
    is_reset_frame,
    select_tokens,
)
from rgtp.core.tracking import check_radius, row_cosine, track
from rgtp.engines.base import EngineSet
from rgtp.package.family import StepResult, UserHead
from rgtp.runtime.finish import CacheFreeFinish, StepFinish
from rgtp.runtime.frames import to_model_input
from rgtp.runtime.options import StreamOptions
from rgtp.runtime.outputs import EngineRunner, OutputChecks
from rgtp.runtime.state import StreamState
from rgtp.runtime.step import (
    RowWrites,
    StageFeeds,
    StepWork,
    run_stage,
    step_graphs,
)
from rgtp.runtime.timing import PartTimer


class StreamBusyError(RuntimeError):
    """A stream was stepped from a second thread while a frame was running."""


class Stream:
    """One video stream over shared engines (`Pipeline.new_stream()`). One thread at a time:
    a second thread that steps it while a step runs gets StreamBusyError; give each thread
    its own stream."""

    def __init__(self, engines: EngineSet, options: StreamOptions) -> None:
        self.engines = engines
        self.plan = plan = engines.plan
        self.options = options
        grid = plan.encoder.grid
        self.policy = options.policy or FixedKeep(plan.num_tokens)
        # One K per stage (`ScheduleKeep`) is checked against each stage's own buckets, one K
        # for every stage against those every stage has; at creation, not on the first
        # pruned step.
        self.schedule: tuple[int, ...] | None = getattr(self.policy, "schedule", None)
        stages = range(len(plan.stages))
        self.policy.check(
            plan.buckets if self.schedule is None else [plan.buckets_of(i) for i in stages]
        )
        check_radius(options.radius, grid)
        self.pruning = options.pruning or plan.config.pruning
        self.rollout_blocks = self.pruning.blocks(plan.global_blocks)
        missing = sorted(set(self.rollout_blocks) - set(plan.rollout_blocks or ()))
        if missing:
            wanted = ",".join(map(str, self.rollout_blocks))
            raise ValueError(
                f"rollout through blocks {self.rollout_blocks} needs the attention rows of "
                f"blocks {missing}, which this package's stages do not return (they return "
                f"rows for blocks {list(plan.rollout_blocks or ())}, the model's rollout "
                "blocks at export); roll out through those, or export again with "
                f"--rollout-blocks {wanted} (StagePlan.create(..., rollout_blocks=...))"
            )
        if self.pruning.cache_free != plan.cache_free:
            have, want = ("", "no ") if plan.cache_free else ("no ", "")
            raise ValueError(
                f"these stages were exported for {have}cache-free pruning and the stream's "
                f"pruning settings ask for {want}cache-free pruning (PruningConfig.cache_free, "
                "the authors' ViViT method): export the package with the settings the "
                "stream runs (rgtp export --paper for the authors' method)"
            )
        self.pool = self.pruning.rollout_pool
        # What novelty compares a token with, where K keeps a share for novelty at all.
        self._novelty = self.pruning.novelty if self.pruning.novelty_share > 0 else None
        if grid % self.pool:
            raise ValueError(
                f"rollout_pool {self.pool} does not divide the {grid}-token grid side; choose "
                "a divisor of it (1: no pooling)"
            )
        if self.pool > 1 and plan.prefix:
            raise ValueError("rollout_pool > 1 needs a model without prefix (CLS) tokens")
        self.checkerboard = None
        if options.reset == "checkerboard":
            self.checkerboard = checkerboard(grid, engines.device)
            k = self.checkerboard.numel()
            if k not in plan.buckets:
                raise ValueError(
                    f"the checkerboard reset keeps {k} tokens, and the package has no K = {k} "
                    f"bucket (buckets: {list(plan.buckets)}); export with it, or reset='dense'"
                )
        # With engines that replay CUDA graphs, the method's own work between engine calls
        # (tracking, top-K, rollout) replays graphs too, on this stream's buffers.
        self._graphs = step_graphs(engines)
        self._finish: StepFinish | CacheFreeFinish = (
            CacheFreeFinish(plan)
            if plan.cache_free
            else StepFinish(
                plan,
                self.rollout_blocks,
                self.pool,
                self.checkerboard,
                self.pruning.similarity,
                self._prepared,
            )
        )
        # the rollout blocks before each stage: the partial rollout its importance undoes
        self._before = [
            tuple(g for g in self.rollout_blocks if g < blocks[0]) for blocks in plan.stages
        ]
        self.state = self._new_state()
        self._busy = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.engines.device

    def _new_state(self) -> StreamState:
        task = self.plan.family.new_task(self.plan, self.options)
        # a cache-free step rolls out through its own rows alone: no buffered rows
        buffered = () if self.plan.cache_free else self.rollout_blocks
        engines = self.engines
        return StreamState(
            self.plan, task, buffered, self.device, self.pool, engines.dtype, engines.cache_dtypes
        )

    @property
    def out_map(self) -> torch.Tensor:
        """The maintained encoder output (E + N, C)."""
        return self.state.out_map

    @property
    def feature_map(self) -> torch.Tensor:
        """A copy of the maintained patch outputs as a conv head reads them, (1, C, H, W)."""
        patches, grid = self.state.out_map[self.plan.prefix :], self.plan.encoder.grid
        return patches.t().reshape(1, patches.shape[1], grid, grid).contiguous()

    def reset(self) -> None:
        """Forget the stream's history: the next frame starts a dense reset step at index 0."""
        with self.exclusive():
            self.state = self._new_state()

    @torch.inference_mode()
    def step(self, frame: object, head: UserHead | None = None) -> Any:
        """Process one frame: RGB (H, W, 3) uint8, or float with `StreamOptions.float_scale`
        (see `rgtp.runtime.frames`). Raises FrameError for a frame outside that contract and
        EngineOutputError for non-finite engine outputs; either way the stream is unchanged.

        Returns the step's result (the family's `StepResult`: detections, or class scores),
        or None for a frame that only fills a time step (a classifier's steps
        are tubelets of several frames).

        head: a detector's own head instead of the package's (required for a package
        exported with `--head none`), called once per frame on the maintained backbone map
        (1, C, H, W); it returns final detections in model-input pixels (see `UserHead`). If
        it raises, or returns something else, the stream is unchanged."""
        with self.exclusive():
            result = self._step(frame, head)
        self.tell_policy(result)
        return result

    def tell_policy(self, result: StepResult | None) -> None:
        """A policy that learns from the steps' times (`runtime.latency_budget`) hears of a
        finished step."""
        observe = getattr(self.policy, "observe", None)
        if result is not None and observe is not None:
            observe(result.k, result.timings["total"])

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the stream for one step (`begin` to `end`): StreamBusyError if another
        thread holds it."""
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

    def _step(self, frame: object, user_head: UserHead | None) -> StepResult | None:
        work = self.begin(frame)
        if work is None:
            return None
        for i in range(len(self.plan.stages)):
            k = self.prepare_stage(work, i)
            run_stage(self.engines.stage(i, k), i, [(self, work)])
        return self.end(work, user_head)

    # The step, phase by phase (held with `exclusive`): `begin`, then for every stage
    # `prepare_stage`, `stage_feeds` and `take_stage_output` (`run_stage` does the last two
    # for one engine call of one or many streams), then `end`. `step` and
    # `Pipeline.step_many` are the two drivers.

    def begin(self, frame: object) -> StepWork | None:
        """A step up to its stages: the frame checked and embedded, the tokens chosen and
        gathered; None for a frame that only fills a time step (then held). Nothing of the
        stream's state changes but buffers the next step rewrites, and the held frame."""
        plan, engines, opts, st = self.plan, self.engines, self.options, self.state
        enc = plan.encoder
        task = st.task
        timer = PartTimer(self.device, opts.timing)
        checks = OutputChecks()

        with timer("prepare"):
            pixels, geometry = to_model_input(
                frame,
                enc.img_size,
                self.device,
                opts.resize,
                opts.float_scale,
                plan.config.pixel_mean,
            )
        frames = [*st.pending, pixels]
        if len(frames) < task.frames_per_step:
            st.pending = frames  # the frame is checked: holding it is the whole step
            return None
        with timer("embed"):
            feeds = task.embed_feeds(frames)
            if self._graphs is not None:  # in the stream's own buffers: the graph replays
                feeds = {n: st.static(f"embed_{n}", t) for n, t in feeds.items()}
            emb = checks.add("embed", engines.embed.run(feeds))
        patches, tokens = emb["patches"], emb["tokens"]

        first = st.prev_importance is None
        reset = first or is_reset_frame(st.frame_index, opts.reset_every)
        if not reset and opts.scene_cut is not None:
            with timer("select"):  # a new scene: the caches and importance show one gone
                assert st.prev_patches is not None
                reset = is_scene_cut(patches, st.prev_patches, opts.scene_cut)
        tracked = similarity = None
        with timer("select"):
            if self._graphs is not None:  # this frame's patches in one of two own buffers
                patches = st.static(f"patches{st.frame_index % 2}", patches)
            if reset and (first or self.checkerboard is None):
                keep = torch.arange(plan.num_tokens, device=tokens.device)
            elif reset:
                keep = self.checkerboard
            else:
                tracked, similarity = self._track(patches)
                k = self.policy.choose(tracked, plan.buckets)
                share = self.pruning.novelty_share
                feeds = {"tracked": tracked}
                if similarity is not None:
                    feeds["similarity"] = similarity
                keep = self._replay(
                    "select",
                    feeds,
                    lambda f: {"keep": select_tokens(f["tracked"], k, f.get("similarity"), share)},
                    k,
                )["keep"]
            x, rows = st.gather(tokens, keep)
        return StepWork(
            timer=timer,
            checks=checks,
            geometry=geometry,
            patches=patches,
            tokens=tokens,
            first=first,
            reset=reset,
            tracked=tracked,
            similarity=similarity,
            keep=keep,
            x=x,
            rows=rows,
        )

    def prepare_stage(self, work: StepWork, stage: int) -> int:
        """Sets the tokens stage `stage` runs on (`work.x`, at rows `work.rows`): all tokens
        for a stage whose first block attends over every token, the previous stage's output,
        or, under a keep schedule, the part of it this stage keeps. Returns the stage's K
        (its bucket; prefix tokens not counted)."""
        prefix = self.plan.prefix
        if self.plan.takes_all_tokens(stage):
            work.x = (
                self.state.all_tokens(work.tokens) if self.engines.static_inputs else work.tokens
            )
        elif (
            work.tracked is not None
            and self.schedule
            and self.schedule[stage] < len(work.rows) - prefix
        ):
            with work.timer("select"):
                work.x, work.rows = self._shrink(
                    stage, work.tracked, work.similarity, work.x, work.rows
                )
        return len(work.rows) - prefix

    def stage_feeds(self, work: StepWork, stage: int) -> StageFeeds:
        """The inputs of this stream's call of stage `stage` (after `prepare_stage`)."""
        blocks = self.plan.cached_blocks(stage)
        st = self.state
        return StageFeeds(
            tokens=work.x,
            rows=work.rows,
            caches=tuple((b, st.k_cache[b], st.v_cache[b]) for b in blocks),
        )

    def take_stage_output(
        self, work: StepWork, stage: int, engine: Any, out: dict[str, torch.Tensor]
    ) -> None:
        """A stage's outputs for this stream: its tokens feed the next stage; its fresh keys,
        values and attention rows wait for the commit (earlier stages of the step never need
        them), each stage's belonging to its own rows (`stage_rows`)."""
        out = work.checks.add(engine.spec.name, out)
        work.x = out.pop("tokens_out")
        work.fresh |= out
        work.stage_rows.append(work.rows)

    def end(self, work: StepWork, user_head: UserHead | None) -> StepResult:
        """The step after its stages: the maintained output, the head, rollout and the
        commit; the stream is unchanged if anything fails."""
        st, task = self.state, self.state.task
        timer, x, rows, patches, keep = work.timer, work.x, work.rows, work.patches, work.keep
        first, reset, tracked, stage_rows = work.first, work.reset, work.tracked, work.stage_rows
        # The maintained output is written in place (no copy of the whole map per step);
        # should anything fail before the commit, the rows it held are put back. The commit
        # of the caches and attention rows goes with the rollout (`StepFinish.prepare`), made ready
        # before the head: a detector's post-processing waits for the GPU, which then waits
        # for whatever the host still has to do.
        writes = RowWrites()
        try:
            with timer("scatter"):
                writes.write(st.out_map, rows, x)
            fill = reset and not first and self.checkerboard is not None
            finish = self._finish.prepare(st, stage_rows, work.fresh, patches, fill)
            with timer("head"):
                static = st.static if self._graphs is not None else None
                runner = EngineRunner(self.engines, work.checks, static)
                prediction = task.predict(st.out_map, runner, user_head)
            with timer("rollout"):
                importance = finish(prediction.target)
                if self.pruning.keep_previous and not reset:
                    # the authors' unpooled rollout: tokens not computed keep last frame's
                    assert st.prev_importance is not None
                    importance = keep_previous(importance, st.prev_importance, keep)
        except BaseException:
            writes.undo()
            raise

        with timer("scatter"):  # nothing below can fail on checked tensors
            if self._graphs is not None:  # graph outputs are overwritten next step: copies
                st.prev_importance = st.static("prev_importance", importance)
                importance = st.prev_importance.clone()  # the result's own
                tracked = None if tracked is None else tracked.clone()
            else:
                st.prev_importance = importance
            st.prev_patches = patches
            if self._novelty == "cache":
                st.refresh_references(patches, keep)
            st.pending = []
            task.commit(prediction)
        common = {
            "index": st.frame_index,
            "reset": reset,
            "k": keep.numel(),
            "keep": keep.to("cpu", copy=True),  # its own: a graph rewrites `keep`
            "importance": importance,
            "tracked": tracked,
            "timings": timer.summary(),
            "stage_k": tuple(len(r) - self.plan.prefix for r in stage_rows),
        }
        st.frame_index += 1
        return task.result(common, prediction, work.geometry)

    def _shrink(
        self,
        stage: int,
        tracked: torch.Tensor,
        similarity: torch.Tensor | None,
        x: torch.Tensor,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens (E + K, C) and rows (E + K,) stage `stage` runs on under a keep schedule:
        of the previous stage's output `x` (E + K', C) at rows `rows` (E + K',), the prefix
        and the K patches of highest importance at the stage's first block, s_l from this
        step's tracked s_0 `tracked` (N,) through the buffered rows of the rollout blocks
        before it (Eq. 8, `later_importance`), with the novelty share chosen as at the input
        (`select_tokens`, `similarity` (N,))."""
        st, prefix, grid = self.state, self.plan.prefix, self.plan.encoder.grid
        k, blocks, share = self.schedule[stage], self._before[stage], self.pruning.novelty_share
        feeds = {"tracked": tracked, "rows": rows}
        feeds |= {f"buffer_{g}": st.attn_rows[g] for g in blocks}
        feeds |= {f"sums_{g}": st.attn_sums[g] for g in blocks}
        if similarity is not None:
            feeds["similarity"] = similarity

        def choose(f: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            s = later_importance(
                [f[f"buffer_{g}"] for g in blocks],
                f["tracked"],
                grid,
                self.pool,
                [f[f"sums_{g}"] for g in blocks],
                prefix,
            )
            kept = f["rows"][prefix:] - prefix  # sorted, so the positions are too
            near = f.get("similarity")
            picked = select_tokens(s[kept], k, None if near is None else near[kept], share)
            head = torch.arange(prefix, device=picked.device)
            return {"positions": torch.cat([head, picked + prefix])}

        positions = self._replay("shrink", feeds, choose, (stage, k))["positions"]
        return st.subset(stage, x, rows, positions)

    def _track(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last step's importance tracked onto `patches`, and, where novelty needs it, each
        token's similarity to what `PruningConfig.novelty` compares it with."""
        opts, pruning, st = self.options, self.pruning, self.state
        novelty = self._novelty

        def tracked(f: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            s, similarity = track(
                f["prev_s"],
                f["prev_z"],
                f["z"],
                self.plan.encoder.grid,
                opts.radius,
                pruning.similarity,
                pruning.track_union,
                with_similarity=novelty == "match",
                off_grid=pruning.off_grid,
            )
            if novelty == "cache":
                similarity = row_cosine(f["z"], f["ref_z"])
            return {"s": s} if similarity is None else {"s": s, "similarity": similarity}

        assert st.prev_importance is not None and st.prev_patches is not None
        feeds = {"prev_s": st.prev_importance, "prev_z": st.prev_patches, "z": patches}
        if novelty == "cache":
            assert st.ref_patches is not None
            feeds["ref_z"] = st.ref_patches
        out = self._replay("track", feeds, tracked)
        return out["s"], out.get("similarity")

    def _prepared(
        self,
        name: str,
        feeds: Mapping[str, torch.Tensor],
        fn: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
        setting: Hashable = None,
    ) -> Callable[[], dict[str, torch.Tensor]]:
        """`_replay(name, feeds, fn, setting)` made ready to run: the graph is looked up now,
        and the call runs it on what the feeds hold then."""
        if self._graphs is None:
            return lambda: fn(feeds)
        return self._graphs[name].prepare(feeds, fn, setting)

    def _replay(
        self,
        name: str,
        feeds: Mapping[str, torch.Tensor],
        fn: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
        setting: Hashable = None,
    ) -> dict[str, torch.Tensor]:
        """`fn(feeds)`, through this stream's CUDA graph `name` where it has graphs."""
        return self._prepared(name, feeds, fn, setting)()
