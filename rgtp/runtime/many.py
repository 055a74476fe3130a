"""Many streams, one engine call per stage and K: the frames of several cameras stepped
together (`Pipeline.step_many`).

Each stream runs its own step (docs/method.md, "The pruned step") up to its stages: embed, tracking,
top-K and gather are per stream. Then, stage by stage, the streams that run the stage at the same K
go through one call of its engine, their tokens, rows and caches stacked on the stage graphs' batch
axis B (`plan.BATCH`), at most `plan.max_batch` streams a call. The stage arithmetic is row by row
per batch entry, so a stream's outputs are those it would get alone (bit-identical on ONNX Runtime
and PyTorch CPU, tested). Then each stream finishes its own step: the head, rollout and the commit.

Engines that replay CUDA graphs on each stream's own buffers (`EngineSet.static_inputs`)
run the streams one by one: a graph is already one launch, and stacking would copy the
buffers its replay reads in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from rgtp.package.family import UserHead
from rgtp.runtime.step import StepWork, run_stage
from rgtp.runtime.stream import Stream


class StepManyError(RuntimeError):
    """Some streams of a `step_many` call failed. Each failed stream is unchanged (as after
    a failed `Stream.step`); the others stepped. `results`: per stream, its result (None for
    a failed one, or one whose frame only filled a time step); `errors`: the failed streams'
    exceptions by position."""

    def __init__(self, results: list[Any], errors: dict[int, Exception]) -> None:
        first = min(errors)
        super().__init__(
            f"{len(errors)} of {len(results)} streams failed (stream {first}: "
            f"{type(errors[first]).__name__}: {errors[first]}); those are unchanged, the "
            "others stepped"
        )
        self.results, self.errors = results, errors


# Under inference mode as `Stream.step`: a stream's buffers are inference tensors once a
# step wrote them, and only inference mode may update them in place.
@torch.inference_mode()
def step_many(
    streams: Sequence[Stream], frames: Sequence[object], head: UserHead | None = None
) -> list[Any]:
    """One frame for each stream (`frames[i]` for `streams[i]`), their stage calls batched
    by (stage, K). Returns each stream's result, as `Stream.step` would (None for a frame
    that only fills a time step). A stream whose frame or step fails is left unchanged and
    the others go on; then StepManyError carries every result and error."""
    streams, frames = list(streams), list(frames)
    if len(streams) != len(frames):
        raise ValueError(f"{len(streams)} streams and {len(frames)} frames: one frame a stream")
    if len({id(s) for s in streams}) != len(streams):
        raise ValueError("a stream appears twice; step it once per call")
    if not streams:
        return []
    engines = streams[0].engines
    if any(s.engines is not engines for s in streams):
        raise ValueError("the streams must come from one pipeline (they share its engines)")
    plan = engines.plan
    limit = 1 if engines.static_inputs else plan.max_batch
    results: list[Any] = [None] * len(streams)
    errors: dict[int, Exception] = {}
    with contextlib.ExitStack() as held:
        for s in streams:
            held.enter_context(s.exclusive())
        works: dict[int, StepWork] = {}
        for j, (s, frame) in enumerate(zip(streams, frames, strict=True)):
            try:
                work = s.begin(frame)
            except Exception as e:
                errors[j] = e
                continue
            if work is not None:
                works[j] = work
        for i in range(len(plan.stages)):
            groups: dict[int, list[int]] = {}  # K -> the streams running stage i at it
            for j in list(works):
                try:
                    k = streams[j].prepare_stage(works[j], i)
                except Exception as e:
                    errors[j] = e
                    del works[j]
                    continue
                groups.setdefault(k, []).append(j)
            for k, members in groups.items():
                engine = engines.stage(i, k)
                for start in range(0, len(members), limit):
                    chunk = members[start : start + limit]
                    try:
                        run_stage(engine, i, [(streams[j], works[j]) for j in chunk])
                    except Exception as e:
                        for j in chunk:
                            errors[j] = e
                            del works[j]
        for j, work in works.items():
            try:
                results[j] = streams[j].end(work, head)
            except Exception as e:
                errors[j] = e
    for s, result in zip(streams, results, strict=True):
        s.tell_policy(result)
    if errors:
        raise StepManyError(results, dict(sorted(errors.items()))) from errors[min(errors)]
    return results
