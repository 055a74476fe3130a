"""The OpenVINO backend (`pip install rgtp[openvino]`): the package's ONNX graphs compiled by
OpenVINO's CPU plugin at static shapes.

OpenVINO compiles fastest kernels for static shapes, so every graph is compiled once per
shape it runs at: a stage per (K bucket, batch B), the others at their one shape. A stage's
graph is read once (its symbolic-K graph where the package has one) and each compiled shape
is a reshaped clone of it; clones share the read model's constants, and the weights file
is memory-mapped, not copied. Shapes for one stream (B = 1) are compiled at load, so the
first frame does not wait and a graph OpenVINO cannot compile fails the load; each larger
B that `Pipeline.step_many` asks for is compiled on its first call and kept.

Inputs and outputs are torch tensors on the CPU, handed to OpenVINO as `ov.Tensor`s over
their memory: nothing is copied in or out. Inference precision is OpenVINO's
`INFERENCE_PRECISION_HINT`: "fp32" (f32) or "bf16" (matrix products and activations in
bfloat16, the interface still float32). docs/openvino.md has measurements and tolerances.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch

try:
    import openvino as ov
except ImportError as e:  # the extra is optional: name it where the backend is asked for
    raise ImportError("the openvino backend needs OpenVINO: pip install rgtp[openvino]") from e

from rgtp.engines.base import EngineError, EngineSet, check_feeds, restrict_buckets
from rgtp.engines.binding import bind_io
from rgtp.package.manifest import GraphRecord, package_file
from rgtp.package.plan import BATCH, GraphSpec, TensorSpec
from rgtp.package.verify import external_data_problems, load_verified

# rgtp's precision names, as OpenVINO's INFERENCE_PRECISION_HINT spells them
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}

_CPU = torch.device("cpu")
# Whether this process has compiled an OpenVINO model: from then on its CPU plugin keeps a
# TBB thread pool, which a fork does not survive (`rgtp.export.parallel.fork_unsafe`).
_COMPILED = False


def engines_created() -> bool:
    """Whether an OpenVINO engine has compiled a model in this process."""
    return _COMPILED


def _compiled_here() -> None:
    global _COMPILED
    _COMPILED = True


log = logging.getLogger(__name__)


def compile_config(precision: str, threads: int | None) -> dict[str, str]:
    """The properties every graph is compiled with: one stream of one request at a time
    (the runtime calls an engine per stage per frame, latency is what counts)."""
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    # always explicit: on CPUs with bfloat16 units OpenVINO's default is bf16, not f32
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


class OpenVinoEngine:
    """One graph behind the engine protocol: one compiled model per input shape, compiled
    from a reshaped clone of `model` on first use, and a pool of infer requests for each
    (requests are not thread-safe; a stream's calls take one, concurrent calls more)."""

    def __init__(
        self, spec: GraphSpec, model: ov.Model, core: ov.Core, config: Mapping[str, str]
    ) -> None:
        self.spec = spec
        self._model, self._core, self._config = model, core, dict(config)
        self._compiled: dict[tuple, ov.CompiledModel] = {}
        self._idle: dict[tuple, list[ov.InferRequest]] = {}
        self._lock = threading.Lock()

    def compile(self, dims: Mapping[str, int]) -> ov.CompiledModel:
        """The compiled model for the inputs' shapes at symbolic sizes `dims` (e.g. {"B": 2})."""
        key = tuple(sorted(dims.items()))
        with self._lock:
            if key not in self._compiled:
                model = self._model.clone()
                model.reshape({t.name: ov.PartialShape(t.concrete(dims)) for t in self.spec.inputs})
                _compiled_here()
                self._compiled[key] = self._core.compile_model(model, "CPU", self._config)
                self._idle[key] = []
            return self._compiled[key]

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dims = check_feeds(self.spec, feeds)
        compiled, key = self.compile(dims), tuple(sorted(dims.items()))
        with self._lock:
            idle = self._idle[key]
            request = idle.pop() if idle else compiled.create_infer_request()
        try:

            def bind(t: TensorSpec, x: torch.Tensor, output: bool) -> None:
                # shared memory: OpenVINO reads the inputs and writes the outputs in place
                request.set_tensor(t.name, ov.Tensor(x.numpy(), shared_memory=True))

            # (the request's tensors keep the inputs alive until it has read them)
            _, outputs = bind_io(self.spec, feeds, _CPU, bind)
            request.infer()
        finally:
            with self._lock:
                self._idle[key].append(request)
        return outputs


def load_openvino_engines(
    package: Path,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    buckets: Sequence[int] | None = None,
    verify: bool = True,
    digest: str | None = None,
) -> EngineSet:
    """Compiled models for an exported package, once every file of it is verified
    (`verify=False`: sizes only, with a warning). `precision` "fp32" or "bf16" (OpenVINO's
    inference precision; inputs and outputs stay float32). `threads`: OpenVINO's
    INFERENCE_NUM_THREADS (default: its own choice, the physical cores). `buckets` loads
    only those K buckets (N, for reset frames, always). `digest` as `load_verified`."""
    device = torch.device(device)
    if device.type != "cpu":
        raise EngineError(f"the openvino backend runs on the CPU, not {device}")
    config = compile_config(precision, threads)
    manifest = load_verified(package, verify, digest)
    plan = restrict_buckets(manifest.plan, buckets)
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        # oneDNN then emulates bf16 products (measured 20x slower than f32, docs/openvino.md)
        log.warning("this CPU has no bfloat16 instructions: bf16 runs emulated, slower than fp32")

    def read(rec: GraphRecord) -> ov.Model:
        graph = package_file(package, rec.file)
        problems = external_data_problems(onnx.load(str(graph), load_external_data=False), rec)
        if problems:
            raise EngineError("; ".join(problems))
        return core.read_model(str(graph))

    def engine(spec: GraphSpec, model: ov.Model) -> OpenVinoEngine:
        eng = OpenVinoEngine(spec, model, core, config)
        axes = {d.partition("+")[0] for t in spec.inputs for d in t.shape if isinstance(d, str)}
        if axes <= {BATCH}:  # one stream's shape, now; any other shape on its first call
            eng.compile(dict.fromkeys(axes, 1))
        return eng

    stages = []
    for i in range(len(plan.stages)):
        (rec,) = manifest.stage_graphs(i, symbolic=True) or [None]
        if rec is not None:  # one read model for every bucket
            model = read(rec)
            stages.append(
                {
                    k: engine(plan.stage_spec(i, k).retyped(rec.spec), model)
                    for k in plan.buckets_of(i)
                }
            )
            continue
        fixed = {g.k: g for g in manifest.stage_graphs(i) if g.k in plan.buckets_of(i)}
        missing = sorted(set(plan.buckets_of(i)) - set(fixed))
        if missing:
            raise EngineError(f"{package}: stage {i} has no graph for K={missing}")
        stages.append({k: engine(g.spec, read(g)) for k, g in fixed.items()})

    def graph(name: str) -> OpenVinoEngine:
        rec = manifest.graph(name)
        return engine(rec.spec, read(rec))

    probe = stages[0][plan.buckets_of(0)[0]]
    return EngineSet(
        plan=plan,
        backend="openvino",
        device=device,
        embed=graph("embed"),
        head=None if plan.head == "none" else graph("head"),
        stages=stages,
        extra={name: graph(name) for name in plan.extra_specs()},
        info={
            "openvino": ov.get_version(),
            "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "precision": precision,
            "capabilities": ",".join(capabilities),
            # what the plugin compiled with (it may differ from the hint on some CPUs)
            "inference_precision": probe.compile({BATCH: 1})
            .get_property("INFERENCE_PRECISION_HINT")
            .get_type_name(),
        },
    )
