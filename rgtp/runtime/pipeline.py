"""A pipeline: one stage plan and its engines, shared by any number of streams."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgtp.engines import load_engines
from rgtp.engines.base import CLOSED, EngineError, EngineSet
from rgtp.engines.torch_backend import torch_engines
from rgtp.package.family import UserHead
from rgtp.package.plan import StagePlan
from rgtp.runtime.many import step_many
from rgtp.runtime.options import StreamOptions
from rgtp.runtime.stream import Stream


class Pipeline:
    """Engines for every graph of a plan; `new_stream()` gives each video its own state.
    `close()` (or leaving `with Pipeline.load(...) as pipe:`) releases the engines."""

    def __init__(self, engines: EngineSet) -> None:
        self.engines = engines
        self.plan: StagePlan = engines.plan

    @property
    def device(self) -> torch.device:
        return self.engines.device

    @property
    def backend(self) -> str:
        return self.engines.backend

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        buckets: Sequence[int] = (),
        partition: str | None = None,
        fusion: str = "rms",
        device: torch.device | str = "cpu",
        prune_from: str | None = None,
        head: str = "rgtp",
        precision: str = "fp32",
        cuda_graphs: bool = False,
        schedules: Sequence[Sequence[int]] = (),
    ) -> Pipeline:
        """The PyTorch reference pipeline of an in-memory model of any family (a `Detector`,
        a `ViViT`; no export needed); a detector's `head` "none" leaves the head to the
        application (`Stream.step(frame, head=...)`). `precision` ("fp32", "fp16", "bf16")
        and `cuda_graphs` (on CUDA) as `engines.torch_backend.torch_engines`. `schedules`:
        keep schedules (one K per stage, `ScheduleKeep`) whose K each stage also gets.
        `partition`, `prune_from`: None for the model's method (`StagePlan.create`)."""
        plan = StagePlan.create(
            model.cfg, buckets, partition, fusion, prune_from, head, schedules=schedules
        )
        return cls(torch_engines(model, plan, device, None, precision, cuda_graphs))

    @classmethod
    def load(
        cls,
        package: str | Path,
        backend: str = "ort",
        digest: str | None = None,
        **backend_options: Any,
    ) -> Pipeline:
        """Load an exported package (see `rgtp export`) on a backend: "ort", "torch", "trt",
        "openvino". `digest`: the package digest you verified ("sha256:<hex>", as `rgtp
        check` prints it); a package with any other manifest is refused (ManifestError)."""
        return cls(load_engines(Path(package), backend, digest=digest, **backend_options))

    @property
    def closed(self) -> bool:
        return self.engines.closed

    def close(self) -> None:
        """Release the engines (ONNX Runtime sessions, OpenVINO compiled models, TensorRT
        plans, their memory) once nothing else holds them; the pipeline and its streams
        then raise EngineError. Closing again does nothing."""
        self.engines.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError(CLOSED)

    def step_many(
        self, streams: Sequence[Stream], frames: Sequence[object], head: UserHead | None = None
    ) -> list[Any]:
        """One frame for each of this pipeline's `streams` (e.g. one per camera), the
        streams that run a stage at the same K sharing one engine call (`runtime.many`).
        Each result is what `Stream.step` would return; StepManyError where some fail."""
        self._check_open()
        if any(s.engines is not self.engines for s in streams):
            raise ValueError("step_many takes streams of this pipeline (pipeline.new_stream())")
        return step_many(streams, frames, head)

    def new_stream(self, options: StreamOptions | None = None, **kwargs: Any) -> Stream:
        """A new stream; keyword arguments are `StreamOptions` fields, or the family's own
        options (`StreamOptions.task`, e.g. a detector's `score_threshold`)."""
        self._check_open()
        if options is not None and kwargs:
            raise TypeError("pass either options or keyword arguments, not both")
        stream_fields = [f.name for f in dataclasses.fields(StreamOptions)]
        task_fields = [f.name for f in dataclasses.fields(self.plan.family.options_type)]
        unknown = sorted(set(kwargs) - set(stream_fields) - set(task_fields))
        if unknown:
            known = ", ".join(stream_fields + task_fields)
            raise TypeError(f"unknown stream options {unknown}; the options are: {known}")
        if options is None:
            task = {n: kwargs.pop(n) for n in task_fields if n in kwargs}
            task = {**kwargs.pop("task", {}), **task}
            options = StreamOptions(**kwargs, task=task)
        return Stream(self.engines, options)
