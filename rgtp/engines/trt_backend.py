"""The TensorRT backend: plans from `rgtp build --backend trt`, run on torch's CUDA streams.

Inputs and outputs are torch CUDA tensors bound by address, so tokens, caches and attention
rows never leave the GPU; gather, scatter, tracking and rollout run on the same stream
between engine calls. Every K of a plan runs on its optimization profile, every context of
a plan on one shared activation memory (`engines.trt_context`). The stage engines read a
stream's own buffers in place, each set of buffers bound once to an execution context of
its own, and optionally replay one CUDA graph per set captured from that context
(`engines.cuda_graphs`). The plans are read by the TensorRT flavour that built them
(`tensorrt` or `tensorrt_rtx`).

Everything that could make a plan unusable is checked at load, before any frame runs:
missing plans, another TensorRT version, another GPU architecture, plans built from other
graphs than the package's, K buckets without a profile, plans whose tensors are not the
graphs' (names, dtypes, output shapes); then every engine runs once (`warmup`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rgtp.engines.base import EngineError, EngineSet
from rgtp.engines.cuda_graphs import GraphCache
from rgtp.engines.trt_build import import_tensorrt
from rgtp.engines.trt_context import CudaStreams, SharedPlan, TrtEngine, check_interface
from rgtp.package.manifest import Manifest, package_file
from rgtp.package.plan import GraphSpec, StagePlan, stage_graph_name
from rgtp.package.verify import load_verified


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
        for k in manifest.plan.buckets_of(i):
            if rec is not None and str(k) not in rec["profiles"]:
                raise EngineError(f"stage {i}: the plan has no optimization profile for K={k}")
            if rec is None and stage_graph_name(i, k) not in by_name:
                raise EngineError(f"stage {i}: no TensorRT plan for K={k}")
    return info


def trt_engine_set(
    plan: StagePlan,
    plans: list[dict[str, Any]],
    open_plan: Callable[[dict[str, Any]], SharedPlan],
    device: torch.device,
    graphs: Callable[[], GraphCache] | None = None,
    declared: Sequence[GraphSpec] = (),
) -> EngineSet:
    """The engines of `plan` on the plans the manifest records (`plans`: its "trt" record's
    list), each plan opened once by `open_plan`. Stage engines are static (a stream's own
    buffers), each with a GraphCache from `graphs` when given. `declared`: a graph of each
    stage as the package declares it, whose dtypes the stage engines take (int8 caches)."""
    by_name = {p["name"]: p for p in plans}
    opened: dict[str, SharedPlan] = {}

    def engine(name: str, spec: GraphSpec, k: int | None = None) -> TrtEngine:
        rec = by_name.get(name)
        if rec is None:
            raise EngineError(f"no TensorRT plan for {name}")
        if name not in opened:
            opened[name] = open_plan(rec)
            check_interface(opened[name].engine, spec, rec["file"])
        shared = opened[name]
        if k is None:
            return TrtEngine(spec, shared, 0, name, device)
        graph_cache = graphs() if graphs else None
        profile = rec["profiles"][str(k)]
        return TrtEngine(spec, shared, profile, f"K={k}", device, static=True, graphs=graph_cache)

    stages = []
    for i in range(len(plan.stages)):
        per_stage = f"stage{i}" in by_name  # one plan, one profile per K
        ks = plan.buckets_of(i)
        names = {k: f"stage{i}" if per_stage else stage_graph_name(i, k) for k in ks}
        specs = {k: plan.stage_spec(i, k) for k in ks}
        if declared:
            specs = {k: spec.retyped(declared[i]) for k, spec in specs.items()}
        stages.append({k: engine(names[k], specs[k], k) for k in ks})
    return EngineSet(
        plan=plan,
        backend="trt",
        device=device,
        embed=engine("embed", plan.embed_spec()),
        head=None if plan.head == "none" else engine("head", plan.head_spec()),
        stages=stages,
        extra={name: engine(name, spec) for name, spec in plan.extra_specs().items()},
        resources=list(opened.values()),
        # the stage engines bind addresses once per set of input buffers
        static_inputs=True,
    )


def warmup(engines: EngineSet) -> None:
    """Run every engine once (embed, every (stage, K), head, the extra graphs) on zeros, so
    that TensorRT's lazy initialisation happens at load and not in a stream's first frames.
    CUDA graphs are still captured at a stream's first steps, on its own buffers."""
    stage_engines = [e for by_k in engines.stages for e in by_k.values()]
    for e in [engines.embed, *stage_engines, engines.head, *engines.extra.values()]:
        if e is not None:
            e.warmup()


def load_trt_engines(
    package: Path,
    device: str | torch.device = "cuda",
    cuda_graphs: bool = False,
    verify: bool = True,
    digest: str | None = None,
) -> EngineSet:
    """Execution contexts for the package's plans, once every file of the package (plans
    included) is verified (`verify=False`: sizes only, with a warning), each engine run
    once (`warmup`). cuda_graphs: the stage engines replay one CUDA graph per set of a
    stream's buffers. `digest` as `load_verified`."""
    manifest = load_verified(package, verify, digest)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EngineError("the trt backend needs a CUDA GPU (device cuda)")
    built = manifest.extra.get("trt") or {}
    trt, flavor = import_tensorrt(built.get("flavor"))  # the flavour that reads these plans
    info = validate_plans(
        package, manifest, flavor, trt.__version__, torch.cuda.get_device_capability(device)
    )
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    side = torch.cuda.Stream(device)  # for work queued on the default stream (`CudaStreams`)

    def open_plan(rec: dict[str, Any]) -> SharedPlan:
        blob = package_file(package, rec["file"]).read_bytes()
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise EngineError(f"{rec['file']}: TensorRT cannot deserialize this plan")
        return SharedPlan(trt, engine, rec["file"], device, CudaStreams(device, side))

    graphs = (lambda: GraphCache(device)) if cuda_graphs else None
    with torch.cuda.device(device):  # TensorRT deserializes onto the current device
        declared = [
            (manifest.stage_graphs(i) or manifest.stage_graphs(i, symbolic=True))[0].spec
            for i in range(len(manifest.plan.stages))
        ]
        engines = trt_engine_set(manifest.plan, info["plans"], open_plan, device, graphs, declared)
        warmup(engines)
        torch.cuda.synchronize(device)  # a plan that fails on the GPU fails here
    memory = sum(p.memory.numel() for p in engines.resources if isinstance(p, SharedPlan))
    engines.info = {
        "tensorrt": f"{flavor} {trt.__version__}",
        "precision": "tf32" if info.get("tf32") else info["precision"],
        "layout": info["layout"],
        "device_memory_bytes": str(memory),
    }
    engines.resources.append(runtime)
    return engines
