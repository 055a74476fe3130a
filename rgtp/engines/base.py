"""The engine protocol every backend implements, and the set of engines a pipeline drives.

Like Polygraphy's runners, every backend exposes the same small surface: an engine has a
`spec` (names, shapes, dtypes of its inputs and outputs) and `run(feeds) -> outputs`, with
torch tensors on the backend's device going in and coming out, so the runtime never
converts data between stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rgtp.package.plan import GraphSpec, StagePlan

# How a backend lays out the engines of a stage: one engine per stage from its symbolic-K
# graph, serving every K bucket (weights and kernels once), or one engine per (stage, K)
# from the static graphs (each specialised to its K).
LAYOUTS = ("per-stage", "per-k")


class EngineError(RuntimeError):
    """An engine cannot be loaded or run as asked (missing bucket, bad plan, bad input)."""


class Engine(Protocol):
    spec: GraphSpec

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the graph on named inputs; returns named outputs on the same device. Outputs
        may be the engine's own buffers (CUDA graphs): valid until the engine runs again on
        the same input buffers; a caller that keeps them longer copies them."""
        ...


CLOSED = "this pipeline is closed (Pipeline.close): its engines are released; load it again"


class ClosedEngine:
    """What a closed `EngineSet` holds in place of an engine: its spec, and EngineError
    for any use."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise EngineError(CLOSED)

    def __getattr__(self, name: str) -> object:  # a backend's own methods (binding, warmup)
        raise EngineError(CLOSED)


@dataclass
class EngineSet:
    """All engines of one pipeline: embed, one engine per (stage, K bucket), head, and the
    family's further graphs (`plan.extra_specs()`, e.g. ViViT's temporal transformer)."""

    plan: StagePlan
    backend: str
    device: torch.device
    embed: Engine
    head: Engine | None  # None: exported with --head none; the application runs its own
    stages: list[dict[int, Engine]]
    info: dict[str, str] = field(default_factory=dict)
    # objects the engines rely on but do not own (e.g. deserialized TensorRT engines)
    resources: list[object] = field(default_factory=list)
    extra: dict[str, Engine] = field(default_factory=dict)
    # dtype of what a stream keeps for these engines: caches, maintained output, tokens
    dtype: torch.dtype = torch.float32
    # the stage engines replay CUDA graphs keyed by their input buffers: a stream feeds them
    # its own buffers, at the same addresses on every step (`engines.cuda_graphs`)
    static_inputs: bool = False
    closed: bool = False

    def close(self) -> None:
        """Let go of every engine and what they rely on: sessions, compiled models and
        plans (and their memory) are freed once nothing else holds them. Each engine is
        replaced by a `ClosedEngine`, so a stream still holding this set fails clearly."""
        self.embed = ClosedEngine(self.embed.spec)
        self.head = None if self.head is None else ClosedEngine(self.head.spec)
        self.stages = [{k: ClosedEngine(e.spec) for k, e in by_k.items()} for by_k in self.stages]
        self.extra = {name: ClosedEngine(e.spec) for name, e in self.extra.items()}
        self.resources = []
        self.closed = True

    @property
    def cache_dtypes(self) -> list[torch.dtype]:
        """What a stream holds each stage's key/value caches in: int8 where the stage's
        engines take them so (a static int8 package's graphs, `export.int8_caches`), else
        `dtype`."""

        def of(stage: int, by_k: dict[int, Engine]) -> torch.dtype:
            caches = self.plan.cache_io(stage)
            int8 = any(
                t.name in caches and t.dtype == "int8"
                for engine in by_k.values()
                for t in engine.spec.inputs
            )
            return torch.int8 if int8 else self.dtype

        return [of(i, by_k) for i, by_k in enumerate(self.stages)]

    def graph(self, name: str) -> Engine:
        """The engine of a graph around the stages, by name: embed, head or an extra one."""
        engine = {"embed": self.embed, "head": self.head, **self.extra}.get(name)
        if engine is None:
            raise EngineError(f"this pipeline has no {name!r} graph")
        return engine

    def stage(self, index: int, k: int) -> Engine:
        try:
            return self.stages[index][k]
        except KeyError:
            raise EngineError(
                f"stage {index} has no engine for K={k}; buckets: {sorted(self.stages[index])}"
            ) from None


def check_feeds(spec: GraphSpec, feeds: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Clear error for a missing input or one of the wrong shape: static axes as declared,
    and each symbolic axis ("K", "K+1") of one size in every input that has it. Returns
    the sizes of the symbolic axes (e.g. {"K": 77})."""
    shapes: dict[str, tuple[int, ...]] = {}
    for t in spec.inputs:
        if t.name not in feeds:
            raise EngineError(f"{spec.name}: missing input {t.name!r}")
        shapes[t.name] = tuple(feeds[t.name].shape)
        if len(shapes[t.name]) != len(t.shape):
            raise EngineError(
                f"{spec.name}: input {t.name!r} has shape {shapes[t.name]}, expected {t.shape}"
            )
    dims = spec.symbolic_dims(shapes)  # each read off the first input with the axis
    sizes = ", ".join(f"{name} = {size}" for name, size in dims.items())
    for t in spec.inputs:
        want = t.concrete(dims)
        if shapes[t.name] != want:
            raise EngineError(
                f"{spec.name}: input {t.name!r} has shape {shapes[t.name]}, expected {t.shape}"
                + (f" = {want} for {sizes}" if dims else "")
            )
    return dims


def restrict_buckets(plan: StagePlan, buckets: Sequence[int] | None) -> StagePlan:
    """The plan with only `buckets` (plus N) in each stage that has them; every requested
    bucket must exist in some stage (a keep schedule's K may be one stage's own)."""
    if buckets is None:
        return plan
    stages = range(len(plan.stages))
    have = sorted({k for i in stages for k in plan.buckets_of(i)})
    missing = sorted(set(buckets) - set(have))
    if missing:
        raise EngineError(f"package has no K buckets {missing}; it has {have}")
    return dataclasses.replace(
        plan,
        buckets=tuple(k for k in plan.buckets if k in buckets),
        stage_buckets=None
        if plan.stage_buckets is None
        else tuple(tuple(k for k in plan.buckets_of(i) if k in buckets) for i in stages),
    )
