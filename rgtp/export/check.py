"""`rgtp check`: does an exported package still hold what its manifest says, and do its
graphs compute what the PyTorch modules compute?

1. files: every file present, of the recorded size and sha256;
2. interfaces: every ONNX graph's input/output names, shapes and dtypes as in the manifest;
3. numerics: each graph on ONNX Runtime against the PyTorch reference through Polygraphy's
   Comparator, reporting the max absolute / relative error of every graph.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER
from tqdm import tqdm

from rgtp.engines.base import Engine
from rgtp.engines.torch_backend import load_torch_engines
from rgtp.export.manifest import GraphRecord, Manifest, ManifestError, verify_files
from rgtp.export.onnx_graphs import example_inputs

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


@dataclass
class GraphCheck:
    name: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    graphs: list[GraphCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and all(g.passed for g in self.graphs)


class EngineRunner(BaseRunner):
    """A Polygraphy runner over one of our engines (the torch reference here)."""

    def __init__(self, engine: Engine, name: str = "torch") -> None:
        super().__init__(name=name, prefix="rgtp-runner")
        self.engine = engine

    def activate_impl(self) -> None:
        pass

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for t in self.engine.spec.inputs:
            meta.add(t.name, np.dtype(t.dtype), t.shape)
        return meta

    def infer_impl(self, feed_dict: OrderedDict) -> OrderedDict:
        start = time.perf_counter()
        out = self.engine.run({k: torch.from_numpy(np.asarray(v)) for k, v in feed_dict.items()})
        self.inference_time = time.perf_counter() - start
        return OrderedDict((k, v.cpu().numpy()) for k, v in out.items())

    def deactivate_impl(self) -> None:
        pass


def interface_problems(directory: Path, rec: GraphRecord) -> list[str]:
    """Differences between a graph file's declared interface and the manifest's."""
    model = onnx.load(str(directory / rec.file), load_external_data=False)

    def describe(values) -> list[tuple[str, tuple, str]]:
        out = []
        for v in values:
            tt = v.type.tensor_type
            shape = tuple(
                d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim
            )
            out.append((v.name, shape, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type))))
        return out

    problems = []
    for label, actual, declared in (
        ("inputs", describe(model.graph.input), rec.inputs),
        ("outputs", describe(model.graph.output), rec.outputs),
    ):
        want = [(t.name, tuple(t.shape), t.dtype) for t in declared]
        if actual != want:
            problems.append(f"{rec.file}: {label} {actual} differ from the manifest's {want}")
    return problems


def _feeds(rec: GraphRecord, manifest: Manifest, k: int | None) -> OrderedDict:
    n = manifest.plan.num_tokens
    spec = rec.spec
    if rec.kind == "embed":
        args = (torch.rand(spec.inputs[0].shape, generator=torch.Generator().manual_seed(0)) * 255,)
    else:
        args = example_inputs(spec, k or n, n)
    return OrderedDict((t.name, a.numpy()) for t, a in zip(spec.inputs, args, strict=True))


def check_package(
    directory: str | Path, atol: float = 1e-4, rtol: float = 1e-3, progress: bool = True
) -> CheckReport:
    directory = Path(directory)
    report = CheckReport()
    try:
        manifest = Manifest.load(directory)
    except ManifestError as e:
        report.problems.append(str(e))
        return report
    report.problems += verify_files(directory, manifest)
    if report.problems:
        return report  # numbers from changed files would only confuse the report
    for rec in manifest.graphs:
        report.problems += interface_problems(directory, rec)
    if report.problems:
        return report

    G_LOGGER.module_severity = G_LOGGER.ERROR  # one line per graph from us, not pages
    reference = load_torch_engines(directory)
    compare = SimpleCompareFunc(atol=atol, rtol=rtol, check_shapes=True)
    for rec in tqdm(manifest.graphs, desc="check", unit="graph", disable=not progress):
        if rec.kind == "stage":
            # a symbolic graph is checked at a K that is not one of its buckets
            k = rec.k if isinstance(rec.k, int) else max(1, manifest.plan.buckets[0] // 2)
            engine = reference.stage(rec.stage, manifest.plan.buckets[-1])
            engine = _at_k(engine, manifest, rec.stage, k)
        else:
            k = None
            engine = reference.embed if rec.kind == "embed" else reference.head
        runners = [
            OnnxrtRunner(SessionFromOnnx(str(directory / rec.file)), name="onnxruntime"),
            EngineRunner(engine),
        ]
        results = Comparator.run(runners, data_loader=[_feeds(rec, manifest, k)])
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
        max_abs = max_rel = 0.0
        for result in accuracy:  # one AccuracyResult per compare function
            for iterations in result.values():  # runner pair -> per-iteration outputs
                for res in (r for it in iterations for r in it.values()):
                    max_abs = max(max_abs, float(res.max_absdiff))
                    max_rel = max(max_rel, float(res.max_reldiff))
        report.graphs.append(GraphCheck(rec.name, max_abs, max_rel, bool(accuracy)))
    return report


def _at_k(engine: Engine, manifest: Manifest, stage: int, k: int) -> Engine:
    from rgtp.engines.torch_backend import TorchEngine

    module = engine.module  # type: ignore[attr-defined]
    return TorchEngine(manifest.plan.stage_spec(stage, k), module)
