"""The end of a stream's step (`rgtp.runtime.stream`): rollout from s_L to s_0 through this
step's attention rows and the buffered rows of the others (docs/method.md, "The pruned step"),
and the commit of the step's keys, values and attention rows into the stream's state, run
so that a failure leaves the state as it was."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping

import torch

from rgtp.core.rollout import (
    cache_free_importance,
    pool_attention_rows,
    token_importance,
    write_rows,
)
from rgtp.core.selection import fill_from_most_similar
from rgtp.package.plan import StagePlan
from rgtp.runtime.state import StreamState
from rgtp.runtime.step import capturing

# (graph name, feeds, fn, setting) -> a call of fn on what the feeds hold then, through the
# stream's CUDA graph of that name where it has graphs (`Stream._prepared`)
Prepare = Callable[
    [str, Mapping[str, torch.Tensor], Callable[..., dict[str, torch.Tensor]], Hashable],
    Callable[[], dict[str, torch.Tensor]],
]


class StepFinish:
    """One stream's rollout and commit, the same every step: the plan, the rollout blocks,
    the rollout pooling (`pool`), a checkerboard reset's kept tokens (`checkerboard`, or
    None) and the similarity a dropped token's importance is filled by."""

    def __init__(
        self,
        plan: StagePlan,
        rollout_blocks: tuple[int, ...],
        pool: int,
        checkerboard: torch.Tensor | None,
        similarity: str,
        prepared: Prepare,
    ) -> None:
        self.plan = plan
        self.rollout_blocks = rollout_blocks
        self.pool = pool
        self.checkerboard = checkerboard
        self.similarity = similarity
        self._prepared = prepared
        # each stage's fresh-rows outputs, in the order of its cache tensor's slices
        self._fresh_rows = [list(plan.cache_io(i).values()) for i in range(len(plan.stages))]
        self._stage_of = {b: i for i, blocks in enumerate(plan.stages) for b in blocks}

    def prepare(
        self,
        state: StreamState,
        stage_rows: list[torch.Tensor],
        fresh: dict[str, torch.Tensor],
        patches: torch.Tensor,
        fill: bool,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The step's last work, made ready to run once s_L is known: called with s_L
        `target` (E + N,), it returns s_0 (N,) of the patch tokens by rollout through this
        step's attention rows and the buffered rows of the others (each block's fresh rows
        are those of its stage's rows, `stage_rows`, (E + K_i,) per stage), and the commit:
        this step's keys, values and attention rows written in place. `fill`: a checkerboard
        reset step, whose dropped tokens take the importance of their most similar kept one.

        Rollout reads the buffers with the step's rows standing in for theirs and the commit
        comes after it, so a failure leaves the stream as it was. A replayed CUDA graph runs
        whole or not at all: captured, the commit comes first and rollout reads the committed
        buffers, the same result for about half the reads of the rows standing in."""
        where = {g: stage_rows[self._stage_of[g]] for g in self.rollout_blocks}
        if self.pool > 1:  # pooled rows land in data-dependent cells: no graph
            return functools.partial(self._pooled, state, stage_rows, fresh, patches, fill, where)
        # s_L goes into a buffer of the stream's own (a graph's input); the feeds are ready
        st, blocks = state, self.rollout_blocks
        target = st.buffer("target", (self.plan.prefix + self.plan.num_tokens,), torch.float32)
        feeds = {"target": target, "patches": patches}
        feeds |= {f"where_{g}": where[g] for g in blocks}
        feeds |= {f"buffer_{g}": st.attn_rows[g] for g in blocks}
        feeds |= {f"sums_{g}": st.attn_sums[g] for g in blocks}
        feeds |= {f"attn_{g}": fresh[f"attn_{g}"] for g in blocks}
        commit_feeds, commit = self._commit_work(state, stage_rows, fresh)

        def finish(f: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if capturing(f["target"]):
                commit(f)
                return {"s0": self._roll_out(f, fill, committed=True)}
            s0 = self._roll_out(f, fill, committed=False)
            commit(f)
            return {"s0": s0}

        run = self._prepared("finish", feeds | commit_feeds, finish, fill)

        def write_target_and_run(s_l: torch.Tensor) -> torch.Tensor:
            target.copy_(s_l)
            return run()["s0"]

        return write_target_and_run

    def _roll_out(self, f: Mapping[str, torch.Tensor], fill: bool, committed: bool) -> torch.Tensor:
        """s_0 (N,) from s_L `f["target"]` through the rollout blocks' buffered rows
        (`buffer_g`, `sums_g`), this step's rows (`attn_g` at `where_g`) standing in for
        theirs unless `committed` (then already written)."""
        blocks, prefix = self.rollout_blocks, self.plan.prefix
        s0 = token_importance(
            [f[f"buffer_{g}"] for g in blocks],
            f["target"],
            self.plan.encoder.grid,
            sums=[f[f"sums_{g}"] for g in blocks],
            where=None if committed else [f[f"where_{g}"] for g in blocks],
            fresh=None if committed else [f[f"attn_{g}"] for g in blocks],
        )
        s0 = s0[prefix:] / s0[prefix:].sum() if prefix else s0
        if fill:
            s0 = fill_from_most_similar(s0, f["patches"], self.checkerboard, self.similarity)
        return s0

    def _pooled(
        self,
        state: StreamState,
        stage_rows: list[torch.Tensor],
        fresh: dict[str, torch.Tensor],
        patches: torch.Tensor,
        fill: bool,
        where: dict[int, torch.Tensor],
        target: torch.Tensor,
    ) -> torch.Tensor:
        """`prepare` with pooled rollout (`PruningConfig.rollout_pool` > 1), run at once: s_0
        (N,) from s_L `target`, then the commit."""
        st, blocks, grid = state, self.rollout_blocks, self.plan.encoder.grid
        pooled = [
            pool_attention_rows(fresh[f"attn_{g}"], where[g], grid, self.pool) for g in blocks
        ]
        s0 = token_importance(
            [st.attn_rows[g] for g in blocks],
            target.float(),
            grid,
            self.pool,
            [st.attn_sums[g] for g in blocks],
            [c for c, _ in pooled],
            [p for _, p in pooled],
        )  # (no prefix: pooling refuses models with one)
        if fill:
            s0 = fill_from_most_similar(s0, patches, self.checkerboard, self.similarity)
        self._commit_pooled(state, stage_rows, fresh, pooled)
        return s0

    def _commit_pooled(
        self,
        state: StreamState,
        stage_rows: list[torch.Tensor],
        fresh: dict[str, torch.Tensor],
        pooled: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """The commit of a step with pooled rollout: keys and values as `_commit_work`, and
        per rollout block its pooled rows into their cells (`pooled`: (cells, rows) per
        block)."""
        feeds, write = self._commit_work(state, stage_rows, fresh, attention=False)
        self._prepared("commit", feeds, lambda f: write(f) or {})()
        for g, (cells, values) in zip(self.rollout_blocks, pooled, strict=True):
            write_rows(state.attn_rows[g], state.attn_sums[g], cells, values)

    def _commit_work(
        self,
        state: StreamState,
        stage_rows: list[torch.Tensor],
        fresh: dict[str, torch.Tensor],
        attention: bool = True,
    ) -> tuple[dict[str, torch.Tensor], Callable[[Mapping[str, torch.Tensor]], None]]:
        """The feeds and the in-place writes of a step's commit: its keys and values into the
        caches and (`attention`) its attention rows and their sums into the rollout buffers,
        each block's at the rows its stage ran (`stage_rows`)."""
        st, blocks, stage_of = state, self.rollout_blocks, self._stage_of
        feeds = {f"rows_{i}": r for i, r in enumerate(stage_rows)}
        feeds |= {f"caches_{i}": c for i, c in enumerate(st.stage_caches)}
        feeds |= {name: fresh[name] for names in self._fresh_rows for name in names}
        if attention:
            feeds |= {f"buffer_{g}": st.attn_rows[g] for g in blocks}
            feeds |= {f"sums_{g}": st.attn_sums[g] for g in blocks}
            feeds |= {f"attn_{g}": fresh[f"attn_{g}"] for g in blocks}

        def write(f: Mapping[str, torch.Tensor]) -> None:
            for i, names in enumerate(self._fresh_rows):
                # each block's rows into its slice of the stage's cache tensor (2 B, N, C):
                # one indexed copy of the stacked rows would copy them twice (CPU, vitdet-b
                # at K = 512: 3.1 against 2.1 ms a stage)
                caches, rows = f[f"caches_{i}"], f[f"rows_{i}"]
                for j, name in enumerate(names):
                    caches[j].index_copy_(0, rows, f[name])
            if attention:
                for g in blocks:
                    rows = f[f"rows_{stage_of[g]}"]
                    write_rows(f[f"buffer_{g}"], f[f"sums_{g}"], rows, f[f"attn_{g}"])

        return feeds, write


class CacheFreeFinish:
    """`StepFinish` of a cache-free plan (`StagePlan.cache_free`, the authors' ViViT pruning):
    rollout through the step's own attention rows only, every dropped token filled from its
    most similar kept one by block 0's keys (`core.rollout.cache_free_importance`); nothing is
    buffered or cached, so there is nothing to commit. Runs eagerly (no CUDA graph)."""

    def __init__(self, plan: StagePlan) -> None:
        self.plan = plan

    def prepare(
        self,
        state: StreamState,
        stage_rows: list[torch.Tensor],
        fresh: dict[str, torch.Tensor],
        patches: torch.Tensor,
        fill: bool,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """As `StepFinish.prepare`: called with s_L (E + N,), returns s_0 (N,)."""
        (rows,) = stage_rows  # one stage
        attention = [fresh[f"attn_{b}"].float() for b in self.plan.row_blocks(0)]
        keys = fresh["keys_0"].float()

        def finish(target: torch.Tensor) -> torch.Tensor:
            s_l = target.float().index_select(0, rows)
            return cache_free_importance(attention, keys, rows, self.plan.prefix, s_l)

        return finish
