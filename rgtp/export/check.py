"""`rgtp check`: does an exported package still hold what its manifest says, and do its
graphs compute what the PyTorch modules compute?

1. manifest: schema, cross-references, file names inside the package;
2. files: every file present, readable, of the recorded size and sha256;
3. interfaces: every ONNX graph's input/output names, shapes and dtypes as in the manifest,
   and its external data in the file the manifest lists; a user's head graph run once, its
   outputs against the shapes it declares;
4. numerics: each graph on ONNX Runtime against the PyTorch reference through Polygraphy's
   Comparator, reporting the max absolute / relative error of every graph.

Every problem is a line of the report, never an exception: `rgtp check` prints them as
FAIL lines.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from rgtp._optional import require
from rgtp.engines.base import Engine, EngineSet
from rgtp.engines.dtypes import dtype
from rgtp.engines.torch_backend import TorchEngine, package_torch_engines
from rgtp.export.onnx_graphs import example_inputs, graph_interface
from rgtp.export.user_head import head_file_problems
from rgtp.package.manifest import GraphRecord, Manifest, ManifestError, package_file
from rgtp.package.plan import TensorSpec
from rgtp.package.verify import external_data_problems, file_problems

_USE = "graph comparison (rgtp check)"  # what needs Polygraphy and ONNX Runtime here
require("polygraphy", "export", _USE)  # first: a missing one names the extra
from polygraphy.backend.base import BaseRunner  # noqa: E402
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx  # noqa: E402
from polygraphy.common import TensorMetadata  # noqa: E402
from polygraphy.comparator import Comparator, SimpleCompareFunc  # noqa: E402
from polygraphy.datatype import DataType  # noqa: E402
from polygraphy.logger import G_LOGGER  # noqa: E402


class CheckError(ValueError):
    """`rgtp check` was asked for something it cannot do (e.g. a NaN tolerance)."""


def tolerance(name: str, value: float) -> float:
    """A comparison tolerance: finite and >= 0 (NaN would pass every comparison)."""
    if not (math.isfinite(value) and value >= 0):
        raise CheckError(f"{name} must be a finite number >= 0, got {value}")
    return value


# int8 graphs against the float32 reference: the largest relative L2 error,
# ||onnx - torch|| / ||torch||, any output of any graph may have. Element-wise tolerances do
# not fit quantized graphs (an element near zero has any relative error); the norm's does.
# Measured on vitdet-small (2026-12-07): 0.004-0.02 for the stage graphs, 0.008 for the head;
# at that level the shipped detector's mAP50 moves by less than 0.5 (docs/precision.md). A
# graph at 0.05 or more is not the int8 lowering of its reference.
INT8_REL_L2 = 0.05


@dataclass
class GraphCheck:
    name: str
    max_abs: float
    max_rel: float
    passed: bool
    rel_l2: float = 0.0  # the largest ||onnx - torch|| / ||torch|| over its outputs
    limit: str = ""  # what it was checked against, as the report states it


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    graphs: list[GraphCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digest: str | None = None  # the package digest checked (None: no manifest to read)

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
            meta.add(t.name, dtype(t.dtype).numpy, t.shape)
        return meta

    def infer_impl(self, feed_dict: OrderedDict) -> OrderedDict:
        start = time.perf_counter()
        out = self.engine.run({k: torch.from_numpy(np.asarray(v)) for k, v in feed_dict.items()})
        self.inference_time = time.perf_counter() - start
        return OrderedDict((k, v.cpu().numpy()) for k, v in out.items())

    def deactivate_impl(self) -> None:
        pass


class Int8CacheRunner(BaseRunner):
    """A graph that holds its caches in int8 (`export.int8_caches`) seen as its float32
    reference is: float32 caches in, quantized on their scales as the runtime holds them;
    the fresh rows out, dequantized. So that the comparison with the reference is of
    values, not of int8 codes against floats."""

    def __init__(self, inner: BaseRunner, scales: dict[str, float], fresh: dict[str, str]):
        super().__init__(name=inner.name, prefix="rgtp-int8-caches")
        self.inner, self.scales = inner, scales
        self.fresh = {fresh[cache]: scale for cache, scale in scales.items()}

    def activate_impl(self) -> None:
        self.inner.activate()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, m in self.inner.get_input_metadata(use_numpy_dtypes=False).items():
            meta.add(name, DataType.FLOAT32 if name in self.scales else m.dtype, m.shape)
        return meta

    def infer_impl(self, feed_dict: OrderedDict) -> OrderedDict:
        feeds = OrderedDict(
            (n, _quantized(v, self.scales[n]) if n in self.scales else v)
            for n, v in feed_dict.items()
        )
        out = self.inner.infer(feeds)
        self.inference_time = self.inner.last_inference_time()
        return OrderedDict(
            (n, v.astype(np.float32) * np.float32(self.fresh[n]) if n in self.fresh else v)
            for n, v in out.items()
        )

    def deactivate_impl(self) -> None:
        self.inner.deactivate()


def _quantized(x: np.ndarray, scale: float) -> np.ndarray:
    """`x` as an int8 cache on `scale`: ONNX QuantizeLinear's rounding (half to even)."""
    return np.clip(np.rint(np.asarray(x) / np.float32(scale)), -128, 127).astype(np.int8)


def interface_problems(directory: Path, rec: GraphRecord) -> list[str]:
    """Differences between a graph file's declared interface and external data and the
    manifest's."""
    try:
        model = onnx.load(str(package_file(directory, rec.file)), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and kin: the file is not an ONNX graph
        return [f"{rec.file}: not a readable ONNX graph ({type(e).__name__}: {e})"]

    def describe(values: tuple[TensorSpec, ...]) -> list[tuple[str, tuple, str]]:
        return [(t.name, tuple(t.shape), t.dtype) for t in values]

    found = graph_interface(model, rec.name)
    problems = external_data_problems(model, rec)
    for label, actual, declared in (
        ("inputs", describe(found.inputs), rec.inputs),
        ("outputs", describe(found.outputs), rec.outputs),
    ):
        want = [(t.name, tuple(t.shape), t.dtype) for t in declared]
        if actual != want:
            problems.append(f"{rec.file}: {label} {actual} differ from the manifest's {want}")
    return problems


def _feeds(rec: GraphRecord, manifest: Manifest, k: int | None) -> OrderedDict:
    plan = manifest.plan
    spec = rec.spec
    if rec.kind == "embed":
        pixels = torch.rand(spec.inputs[0].concrete({}), generator=torch.Generator().manual_seed(0))
        args = (pixels * 255,)
    else:
        # two streams, each with its own kept rows: the batch axis is checked too
        args = example_inputs(spec, k or plan.num_tokens, plan.num_tokens, plan.prefix, batch=2)
    return OrderedDict((t.name, a.numpy()) for t, a in zip(spec.inputs, args, strict=True))


def check_package(
    directory: str | Path, atol: float = 1e-4, rtol: float = 1e-3, progress: bool = True
) -> CheckReport:
    atol, rtol = tolerance("atol", atol), tolerance("rtol", rtol)
    directory = Path(directory)
    report = CheckReport()
    try:
        manifest = Manifest.load(directory)
    except ManifestError as e:
        report.problems += e.problems
        return report
    report.digest = manifest.digest
    report.problems += file_problems(directory, manifest)[0]
    if report.problems:
        return report  # numbers from changed files would only confuse the report
    for rec in manifest.graphs:
        problems = interface_problems(directory, rec)
        if not problems and rec.kind == "head" and manifest.plan.head == "onnx":
            # the user's graph keeps the interface it declares only if it computes it
            problems = head_file_problems(package_file(directory, rec.file), rec.spec)
        report.problems += problems
    if manifest.model_weights is None:
        report.problems.append(
            "no reference weights (exported with --no-reference): the graphs cannot be "
            "compared with the model; check a package exported with --reference"
        )
    if report.problems:
        return report

    require("onnxruntime", "ort", _USE)  # Polygraphy's runner of the graphs
    G_LOGGER.module_severity = G_LOGGER.ERROR  # one line per graph from us, not pages
    # The contract of check is a report, not a traceback: whatever the reference loader,
    # ONNX Runtime or Polygraphy raise becomes the FAIL line of the file it concerns.
    try:
        reference = package_torch_engines(directory, manifest)  # files verified above
    except Exception as e:
        report.problems.append(f"{manifest.model_weights}: cannot load it ({e})")
        return report
    for rec in tqdm(manifest.graphs, desc="check", unit="graph", disable=not progress):
        if rec.kind == "head" and manifest.plan.head == "onnx":
            report.notes.append(
                f"{rec.file}: your head graph: hash, interface and one run checked; no "
                "PyTorch reference to compare its numbers with"
            )
            continue
        try:
            report.graphs.append(_compare(directory, manifest, reference, rec, atol, rtol))
        except Exception as e:
            report.problems.append(f"{rec.file}: cannot run it ({type(e).__name__}: {e})")
    return report


def _compare(
    directory: Path,
    manifest: Manifest,
    reference: EngineSet,
    rec: GraphRecord,
    atol: float,
    rtol: float,
) -> GraphCheck:
    """One graph on ONNX Runtime against the reference: max abs/rel error and relative L2
    error over its outputs; float32 graphs pass within `atol`/`rtol` element-wise, int8
    graphs within `INT8_REL_L2`."""
    int8 = manifest.quantization is not None and rec.name in manifest.quantization["graphs"]
    # (int8: Polygraphy's element-wise verdict is not the criterion, only its errors are read)
    compare = SimpleCompareFunc(
        atol=math.inf if int8 else atol, rtol=math.inf if int8 else rtol, check_shapes=True
    )
    if rec.kind == "stage":
        # a symbolic graph is checked at a K that is not one of its buckets
        k = rec.k if isinstance(rec.k, int) else max(1, manifest.plan.buckets[0] // 2)
        engine = reference.stage(rec.stage, manifest.plan.buckets[-1])
        engine = _at_k(engine, manifest, rec.stage, k)
    else:
        k = None
        engine = reference.graph(rec.name)
    graph: BaseRunner = OnnxrtRunner(
        SessionFromOnnx(str(package_file(directory, rec.file))), name="onnxruntime"
    )
    scales = (manifest.quantization or {}).get("int8_caches", {})
    if rec.kind == "stage" and rec.stage is not None:
        io = manifest.plan.cache_io(rec.stage)
        own = {cache: scales[cache] for cache in io if cache in scales}
        if own:
            graph = Int8CacheRunner(graph, own, io)
    runners = [graph, EngineRunner(engine)]
    results = Comparator.run(runners, data_loader=[_feeds(rec, manifest, k)])
    accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    max_abs = max_rel = 0.0
    for result in accuracy:  # one AccuracyResult per compare function
        for iterations in result.values():  # runner pair -> per-iteration outputs
            for res in (r for it in iterations for r in it.values()):
                max_abs = max(max_abs, float(res.max_absdiff))
                max_rel = max(max_rel, float(res.max_reldiff))
    (_, (onnx_out,)), (_, (torch_out,)) = results
    rel_l2 = max(_rel_l2(onnx_out[name], torch_out[name]) for name in torch_out)
    if int8 and manifest.quantization["method"] == "static":
        # Static scales hold for what the graphs see on video (their calibration); the
        # random inputs here fall outside it and clip, so the error is shown, not judged:
        # held-out accuracy judges a static package (benchmarks/precision_accuracy.py).
        finite = all(np.isfinite(v).all() for v in onnx_out.values())
        return GraphCheck(rec.name, max_abs, max_rel, finite, rel_l2, "static int8: finite")
    if int8:
        return GraphCheck(
            rec.name,
            max_abs,
            max_rel,
            rel_l2 < INT8_REL_L2,
            rel_l2,
            f"int8: rel L2 < {INT8_REL_L2}",
        )
    return GraphCheck(
        rec.name, max_abs, max_rel, bool(accuracy), rel_l2, f"atol {atol}, rtol {rtol}"
    )


def _rel_l2(actual: np.ndarray, reference: np.ndarray) -> float:
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    norm = float(np.linalg.norm(r))
    diff = float(np.linalg.norm(a - r))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def _at_k(engine: Engine, manifest: Manifest, stage: int, k: int) -> Engine:
    module = engine.module  # type: ignore[attr-defined]
    return TorchEngine(manifest.plan.stage_spec(stage, k), module)
