"""The TensorRT backend: plans from `rgtp build --backend trt`, run on one CUDA stream.

Inputs and outputs are torch CUDA tensors bound by address (`set_tensor_address`), so
tokens, caches and attention rows never leave the GPU; gather, scatter, tracking and
rollout run on the same torch stream between engine calls. A multi-profile plan gets one
execution context per profile (one per K bucket), each created once at load.

Everything that could make a plan unusable is checked at load, before any frame runs:
missing plans, another TensorRT version, another GPU architecture, plans built from other
graphs than the package's, and K buckets without a profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rgtp.engines.base import EngineError, EngineSet
from rgtp.engines.binding import bind_io, input_buffers
from rgtp.engines.trt_build import import_tensorrt
from rgtp.models.manifest import Manifest, package_file
from rgtp.models.package_verify import load_verified
from rgtp.models.plan import GraphSpec, TensorSpec, stage_graph_name


class TrtEngine:
    """One execution context (one optimization profile) of a deserialized plan."""

    def __init__(self, spec: GraphSpec, context: Any, device: torch.device, cuda_graph: bool):
        self.spec = spec
        self.context = context
        self.device = device
        self.cuda_graph = cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: dict[str, torch.Tensor] = {}
        self._static_out: dict[str, torch.Tensor] = {}

    def _bind(self, t: TensorSpec, x: torch.Tensor, output: bool) -> None:
        if not output:
            self.context.set_input_shape(t.name, tuple(x.shape))
        self.context.set_tensor_address(t.name, x.data_ptr())

    def _execute(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError(f"{self.spec.name}: TensorRT execution failed")

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.cuda_graph:
            # inputs may be freed on return: torch reuses their memory only for work queued
            # after this run on the same stream
            _inputs, outputs = bind_io(self.spec, feeds, self.device, self._bind)
            self._execute()  # enqueued on torch's current stream: later torch ops wait for it
            return outputs
        inputs = input_buffers(self.spec, feeds, self.device)
        if self._graph is None:
            # buffers of the graph's own: the caller's tensors are copied in on every replay
            self._static_in = {n: x.clone() for n, x in inputs.items()}
            _, self._static_out = bind_io(self.spec, self._static_in, self.device, self._bind)
            self._execute()  # TensorRT allocates its resources outside capture
            torch.cuda.current_stream(self.device).synchronize()
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._execute()
        for n, x in self._static_in.items():
            x.copy_(inputs[n], non_blocking=True)
        self._graph.replay()
        # the graph's buffers are reused by the next replay: hand out copies
        return {n: y.clone() for n, y in self._static_out.items()}


def validate_plans(
    package: Path, manifest: Manifest, flavor: str, version: str, capability: tuple[int, int]
) -> dict[str, Any]:
    """Every reason the package's plans cannot run here, raised before any frame runs:
    no plans, plans built from other graphs (another model or export), another TensorRT,
    another GPU architecture, a K bucket without a profile. (Changed files are the
    verification's business, done before.) Returns the manifest's "trt" record."""
    info = manifest.extra.get("trt")
    if not info:
        raise EngineError(f"{package}: no TensorRT plans; run `rgtp build {package} --backend trt`")
    for p in info["plans"]:
        if manifest.files[p["onnx"]]["sha256"] != p["onnx_sha256"]:
            raise EngineError(
                f"{p['file']} was built from another {p['onnx']} (another model or export): "
                "rebuild the plans"
            )
    if info["flavor"] != flavor or info["version"] != version:
        raise EngineError(
            f"plans were built by {info['flavor']} {info['version']}, installed is {flavor} "
            f"{version}: rebuild them with `rgtp build --backend trt`"
        )
    major, minor = capability
    targets = {c.removeprefix("SM").replace(".", "") for c in info["compute_capability"].split(",")}
    if f"{major}{minor}" not in targets:
        raise EngineError(
            f"plans were built for compute capability {info['compute_capability']} "
            f"({info['device']}); this GPU is {major}.{minor}: rebuild them on this machine"
        )
    by_name = {p["name"]: p for p in info["plans"]}
    for i in range(len(manifest.plan.stages)):
        rec = by_name.get(f"stage{i}")
        for k in manifest.plan.buckets:
            if rec is not None and str(k) not in rec["profiles"]:
                raise EngineError(f"stage {i}: the plan has no optimization profile for K={k}")
            if rec is None and stage_graph_name(i, k) not in by_name:
                raise EngineError(f"stage {i}: no TensorRT plan for K={k}")
    return info


def load_trt_engines(
    package: Path,
    device: str | torch.device = "cuda",
    cuda_graphs: bool = False,
    verify: bool = True,
) -> EngineSet:
    """Execution contexts for the package's plans, once every file of the package (plans
    included) is verified (`verify=False`: sizes only, with a warning)."""
    manifest = load_verified(package, verify)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EngineError("the trt backend needs a CUDA GPU (device cuda)")
    trt, flavor = import_tensorrt()
    info = validate_plans(
        package, manifest, flavor, trt.__version__, torch.cuda.get_device_capability(device)
    )
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    plan = manifest.plan
    by_name = {p["name"]: p for p in info["plans"]}
    engines: list[Any] = []  # deserialized engines must outlive their contexts

    def contexts(rec: dict[str, Any]) -> list[Any]:
        engine = runtime.deserialize_cuda_engine(package_file(package, rec["file"]).read_bytes())
        if engine is None:
            raise EngineError(f"{rec['file']}: TensorRT cannot deserialize this plan")
        engines.append(engine)
        out = []
        stream = torch.cuda.current_stream(device).cuda_stream
        for index in range(max(1, engine.num_optimization_profiles)):
            ctx = engine.create_execution_context()
            if engine.num_optimization_profiles > 1:
                ctx.set_optimization_profile_async(index, stream)
            out.append(ctx)
        return out

    def single(name: str, spec: GraphSpec) -> TrtEngine:
        if name not in by_name:
            raise EngineError(f"no TensorRT plan for {name}")
        return TrtEngine(spec, contexts(by_name[name])[0], device, cuda_graphs)

    stages: list[dict[int, Any]] = []
    for i in range(len(plan.stages)):
        engines_k: dict[int, Any] = {}
        if f"stage{i}" in by_name:  # one plan, one profile per K
            rec = by_name[f"stage{i}"]
            ctxs = contexts(rec)
            for k in plan.buckets:
                ctx = ctxs[rec["profiles"][str(k)]]
                engines_k[k] = TrtEngine(plan.stage_spec(i, k), ctx, device, cuda_graphs)
        else:
            for k in plan.buckets:
                engines_k[k] = single(stage_graph_name(i, k), plan.stage_spec(i, k))
        stages.append(engines_k)
    return EngineSet(
        plan=plan,
        backend="trt",
        device=device,
        embed=single("embed", plan.embed_spec()),
        head=None if plan.head == "none" else single("head", plan.head_spec()),
        stages=stages,
        extra={name: single(name, spec) for name, spec in plan.extra_specs().items()},
        info={
            "tensorrt": f"{flavor} {trt.__version__}",
            "precision": info["precision"],
            "layout": info["layout"],
        },
        resources=[runtime, *engines],
    )
