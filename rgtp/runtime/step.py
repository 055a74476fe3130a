"""A step's parts outside the stream (`rgtp.runtime.stream`): what a step carries between its
phases (`StepWork`) and into a stage graph (`StageFeeds`), one stage's engine call for one
stream or many (`run_stage`), the in-place writes a failed step undoes (`RowWrites`), and the
CUDA graphs of the method's own work between engine calls (`step_graphs`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rgtp.engines.base import EngineSet
from rgtp.engines.cuda_graphs import GraphCache
from rgtp.runtime.outputs import OutputChecks
from rgtp.runtime.timing import PartTimer

if TYPE_CHECKING:  # types only: a stream drives its step's parts
    from rgtp.runtime.stream import Stream


@dataclass(kw_only=True)
class StepWork:
    """One stream's step between its phases (`Stream.begin` to `Stream.end`): what the
    step has computed so far, none of it committed to the stream's state."""

    timer: PartTimer
    checks: OutputChecks
    geometry: Any  # how the frame was fitted to the model input
    patches: torch.Tensor  # z_0 (N, C)
    tokens: torch.Tensor  # the embedded tokens (E + N, C)
    first: bool  # the stream's first step
    reset: bool
    tracked: torch.Tensor | None  # s_0 tracked onto this step (None on reset steps)
    similarity: torch.Tensor | None
    keep: torch.Tensor  # (K,) the patch tokens kept at the input (`StepResult.keep`)
    x: torch.Tensor  # the tokens the next stage reads, then the last stage's output
    rows: torch.Tensor  # their rows among the E + N (E + K,)
    fresh: dict[str, torch.Tensor] = field(default_factory=dict)  # stage outputs to commit
    stage_rows: list[torch.Tensor] = field(default_factory=list)  # the rows of each stage


@dataclass(frozen=True)
class StageFeeds:
    """The inputs of one stream's call of a stage graph (`plan.stage_spec`): the tokens
    (E + K, C), their rows (E + K,) and each cached block's key and value caches (E + N, C),
    as (block, k, v)."""

    tokens: torch.Tensor
    rows: torch.Tensor
    caches: tuple[tuple[int, torch.Tensor, torch.Tensor], ...]

    def by_name(self) -> dict[str, torch.Tensor]:
        """By the graph's input names (the rows are its input `keep`)."""
        feeds = {"tokens": self.tokens, "keep": self.rows}
        for b, k, v in self.caches:
            feeds[f"k_cache_{b}"], feeds[f"v_cache_{b}"] = k, v
        return feeds


def run_stage(engine: Any, stage: int, members: list[tuple[Stream, StepWork]]) -> None:
    """One call of a stage's engine for `members` (streams at one K; `runtime.many` batches
    several), each stream's inputs an entry of the batch axis; each gets its own entry of
    every output. Every member's timer counts the call under "stages"."""
    feeds = [s.stage_feeds(w, stage).by_name() for s, w in members]
    with contextlib.ExitStack() as timing:
        for _, w in members:
            timing.enter_context(w.timer("stages"))
        if len(feeds) == 1:  # views: engines replaying graphs read the stream's buffers
            batch = {n: t.unsqueeze(0) for n, t in feeds[0].items()}
        else:
            batch = {n: torch.stack([f[n] for f in feeds]) for n in feeds[0]}
        out = engine.run(batch)
        for b, (s, w) in enumerate(members):
            s.take_stage_output(w, stage, engine, {n: t[b] for n, t in out.items()})


class RowWrites:
    """In-place writes of rows into a step's buffers, undone in reverse if the step fails:
    the rows they replaced are kept (K rows, not the buffers)."""

    def __init__(self) -> None:
        self._replaced: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def write(self, buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        self._replaced.append((buffer, rows, buffer.index_select(0, rows)))
        buffer.index_copy_(0, rows, values.to(buffer.dtype))

    def undo(self) -> None:
        for buffer, rows, old in reversed(self._replaced):
            buffer.index_copy_(0, rows, old)
        self._replaced.clear()


def capturing(t: torch.Tensor) -> bool:
    """Whether work on `t`'s device is being captured into a CUDA graph now (not run)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


STEP_GRAPHS = ("track", "select", "shrink", "finish", "commit")


def step_graphs(engines: EngineSet) -> dict[str, GraphCache] | None:
    """A new stream's graphs of tracking, top-K (at the input, and where a keep schedule
    shrinks a later stage), rollout and the cache commit, where its
    engines replay CUDA graphs on the stream's buffers (`EngineSet.static_inputs`) on a GPU;
    else None."""
    if not (engines.static_inputs and engines.device.type == "cuda"):
        return None
    return {name: GraphCache(engines.device) for name in STEP_GRAPHS}
