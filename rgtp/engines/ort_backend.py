"""The ONNX Runtime backend.

Inputs and outputs are torch tensors bound through `IOBinding` by pointer (CPU or CUDA), so
no stage result is copied on its way to the next stage. Weights live once per stage: the
stage's external-data file is read once and its tensors are handed to every K bucket's
session with `SessionOptions.add_initializer` (caller-owned memory, used as is),
pre-packing is off (its copies would be per session), and all sessions draw intermediate
buffers from one shared arena (`session.use_env_allocators`). Still, every session has its
own kernels and scratch, so the default layout is "per-stage": one session per stage from
the symbolic-K graph where the package has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from rgtp._optional import require
from rgtp.engines.base import LAYOUTS, EngineError, EngineSet, check_feeds, restrict_buckets
from rgtp.engines.binding import bind_io
from rgtp.engines.dtypes import dtype
from rgtp.package.manifest import GraphRecord, package_file
from rgtp.package.plan import GraphSpec, TensorSpec
from rgtp.package.verify import external_data_problems, load_verified

ort = require("onnxruntime", "ort")  # `rgtp[ort]` or `rgtp[ort-gpu]`: the message names both

_ENV_ALLOCATOR_READY = False


def _ensure_env_allocator() -> None:
    """Register one process-wide CPU arena that every session shares."""
    global _ENV_ALLOCATOR_READY
    if not _ENV_ALLOCATOR_READY:
        mem = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        # (max_mem 0: no limit, extend strategy 1: grow by what is requested, not to the next
        # power of two, which left large unused blocks)
        ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, 1, -1, -1))
        _ENV_ALLOCATOR_READY = True


class SharedInitializers:
    """The tensors of one external-data file, loaded once and shared by many sessions.

    Tensors are keyed by (offset, length, dtype, shape), so identical parameters that
    several graphs name differently still map to one buffer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blob = np.fromfile(path, dtype=np.uint8)
        # OrtValues over views of `blob`: the sessions read them in place
        self._values: dict[tuple, ort.OrtValue] = {}

    def attach(self, model: onnx.ModelProto, options: ort.SessionOptions) -> None:
        """Hand every external tensor of `model` to `options` as a shared initializer.

        `add_initializer` makes ORT use the caller's CPU buffer as is; measured on ORT 1.32,
        `add_external_initializers` instead copied every tensor into each session."""
        for init in model.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            ext = {e.key: e.value for e in init.external_data}
            offset, length = int(ext.get("offset", 0)), int(ext["length"])
            np_type = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            key = (offset, length, np.dtype(np_type).str, tuple(init.dims))
            if key not in self._values:
                arr = self.blob[offset : offset + length].view(np_type).reshape(tuple(init.dims))
                self._values[key] = ort.OrtValue.ortvalue_from_numpy(arr)
            options.add_initializer(init.name, self._values[key])

    def nbytes(self) -> int:
        return int(self.blob.nbytes)


class OrtEngine:
    """One ONNX Runtime session behind the engine protocol."""

    def __init__(
        self,
        spec: GraphSpec,
        session: ort.InferenceSession,
        device: torch.device,
        keep_alive: object = None,
    ) -> None:
        self.spec = spec
        self.keep_alive = keep_alive
        self.session = session
        self.device = device
        self._ort_device = "cuda" if device.type == "cuda" else "cpu"
        self._device_id = device.index or 0

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()

        def bind(t: TensorSpec, x: torch.Tensor, output: bool) -> None:
            (binding.bind_output if output else binding.bind_input)(
                t.name,
                self._ort_device,
                self._device_id,
                dtype(t.dtype).numpy,
                list(x.shape),
                x.data_ptr(),
            )

        # ORT reads the inputs in place: they stay referenced here until the run is over
        inputs, outputs = bind_io(self.spec, feeds, self.device, bind)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        del inputs
        return outputs


# An execution provider as `InferenceSession(providers=...)` takes it: a name, or a name and
# its options.
Provider = str | tuple[str, dict[str, int]]


def _providers(device: torch.device, available: list[str] | None = None) -> list[Provider]:
    """The providers of sessions on `device`, among `available` (the installed ones by
    default). The CUDA provider is told the device's index: without it, it runs on GPU 0."""
    available = ort.get_available_providers() if available is None else available
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise EngineError(
                "device cuda needs onnxruntime-gpu (CUDAExecutionProvider): pip install "
                "'rgtp[ort-gpu]' in an environment without onnxruntime; installed providers: "
                f"{available}"
            )
        # the index the engines bind their tensors on (`OrtEngine`)
        cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session_options(threads: int | None, prepack: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.use_env_allocators", "1")
    # A memory pattern is a per-session block sized for that graph: one per K bucket.
    opts.enable_mem_pattern = False
    # Pre-packed weights are a copy per session, so per K bucket in the per-k layout: there
    # the weights stay unpacked. But MLAS multiplies unpacked weights with results that
    # depend on the rows' count when two threads share the work (measured: a stage's batch
    # of one differs from the same stream in a batch of eight by 7e-7), so one session per
    # stage (`prepack`) packs its weights once and a stream's rows come out the same
    # whether it runs alone or batched with others (`runtime.many`).
    opts.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
    # Every session owns a thread pool; spinning pools of the other stages/buckets would
    # busy-wait against the engine running now and against gather/scatter/rollout between
    # engine calls (measured on 2 cores: a vitdet-small frame took 5-8x longer with spinning).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def load_ort_engines(
    package: Path,
    device: str | torch.device = "cpu",
    layout: str | None = None,
    threads: int | None = None,
    buckets: Sequence[int] | None = None,
    verify: bool = True,
    prepack: bool | None = None,
    digest: str | None = None,
) -> EngineSet:
    """Sessions for an exported package, once every file of it is verified (`verify=False`:
    sizes only, with a warning). `layout` "per-stage": one session per stage from the
    symbolic-K graph (the default when the package has them); "per-k": one session per
    (stage, K) from the static graphs. `buckets` loads only those K buckets (N, for reset
    frames, always). `prepack`: the stage sessions keep their weights packed for their
    kernels (`_session_options`), so streams batched together (`Pipeline.step_many`) get
    what they would alone bit for bit; None: in the per-stage layout only (per-k, it costs
    a copy of the weights per K bucket). `digest` as `load_verified`."""
    device = torch.device(device)
    manifest = load_verified(package, verify, digest)
    # One session per stage wherever the package allows it: every ORT session carries its
    # own kernels and buffers (benchmarks/memory.py measures 8 buckets against 1). It is
    # also the faster layout here now that its weights are packed (vitdet-b @672, K = 512,
    # 2 cores, 2026-11-27: 768 ms a frame's backbone per-stage, 921 ms per-k unpacked);
    # "per-k" stays a choice.
    layout = layout or ("per-stage" if any(g.symbolic for g in manifest.graphs) else "per-k")
    if layout not in LAYOUTS:
        raise EngineError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    prepack = layout == "per-stage" if prepack is None else prepack
    providers = _providers(device)
    _ensure_env_allocator()
    shared: dict[str, SharedInitializers] = {}

    def session(rec: GraphRecord, prepack: bool = False) -> OrtEngine:
        return open_session(package, rec, device, threads, shared, providers, prepack)

    plan = restrict_buckets(manifest.plan, buckets)
    stages = []
    for i in range(len(plan.stages)):
        if layout == "per-k":
            fixed = {g.k: g for g in manifest.stage_graphs(i) if g.k in plan.buckets_of(i)}
            missing = sorted(set(plan.buckets_of(i)) - set(fixed))
            if missing:
                raise EngineError(
                    f"{package}: stage {i} has no fixed-K graph for K={missing}; "
                    "load layout 'per-stage'"
                )
            stages.append({k: session(g, prepack) for k, g in fixed.items()})
        else:
            (rec,) = manifest.stage_graphs(i, symbolic=True) or [None]
            if rec is None:
                raise EngineError(f"{package}: no symbolic-K graph for stage {i}; re-export")
            engine = session(rec, prepack)
            stages.append(
                {
                    k: _SpecAt(engine, plan.stage_spec(i, k).retyped(rec.spec))
                    for k in plan.buckets_of(i)
                }
            )
    return EngineSet(
        plan=plan,
        backend="ort",
        device=device,
        embed=session(manifest.graph("embed")),
        head=None if plan.head == "none" else session(manifest.graph("head")),
        stages=stages,
        extra={name: session(manifest.graph(name)) for name in plan.extra_specs()},
        # the sessions read these buffers in place: they must live as long as the sessions
        resources=list(shared.values()),
        info={
            "onnxruntime": ort.__version__,
            "providers": ",".join(p if isinstance(p, str) else p[0] for p in providers),
            "layout": layout,
            "prepacked_stages": str(prepack),
            "weights_bytes": str(sum(s.nbytes() for s in shared.values())),
        },
    )


def open_session(
    package: Path,
    rec: GraphRecord,
    device: torch.device,
    threads: int | None = None,
    shared: dict[str, SharedInitializers] | None = None,
    providers: list[Provider] | None = None,
    prepack: bool = False,
) -> OrtEngine:
    """One session for a graph of a verified package. Weights files are read once into
    `shared` (keep it alive as long as the session) and handed to every session using them;
    with `prepack`, the session also keeps its own copy of them packed for its kernels."""
    graph = package_file(package, rec.file)
    model = onnx.load(str(graph), load_external_data=False)
    problems = external_data_problems(model, rec)
    if problems:
        raise EngineError("; ".join(problems))
    opts = _session_options(threads, prepack)
    if rec.weights:
        shared = {} if shared is None else shared
        if rec.weights not in shared:
            shared[rec.weights] = SharedInitializers(package_file(package, rec.weights))
        shared[rec.weights].attach(model, opts)
    _ensure_env_allocator()
    # Every external tensor is supplied by add_initializer, so ORT never reads the weights
    # file again (it only checks the path, hence the graph is opened by path). Constant
    # folding is off: it materialised per-session tensors (about 13 MB per vitdet-b stage
    # session) out of shared ones, i.e. copies per K bucket.
    sess = ort.InferenceSession(
        str(graph),
        opts,
        providers=providers or _providers(device),
        disabled_optimizers=["ConstantFolding"],
    )
    # the session reads the shared buffers in place: the engine keeps them alive
    return OrtEngine(rec.spec, sess, device, keep_alive=shared)


class _SpecAt:
    """A symbolic-K engine seen at one K: same session, static spec for input checks."""

    def __init__(self, engine: OrtEngine, spec: GraphSpec) -> None:
        self.engine, self.spec = engine, spec

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_feeds(self.spec, feeds)
        return self.engine.run(feeds)
