"""`rgtp build --backend trt`: TensorRT plans for an exported package.

One builder for TensorRT 10/11 (`tensorrt`) and TensorRT-RTX (`tensorrt_rtx_bindings`, which
builds ahead of time on a machine without a GPU). In the default layout, "per-stage", every
stage becomes one plan from its symbolic-K graph, holding one optimization profile per K
bucket with K fixed (the shapes of that K's static graph), so its weights exist once;
layout "per-k" builds one plan per (stage, K) from the static graphs instead. A stage
profile spans batches of 1..`opt_batch` streams and no more: rgtp's TensorRT runtime steps
one stream per call (each stream replays CUDA graphs on its own buffers), so by default the
plans hold activation memory for one stream, not for the package's `max_batch`.

Every plan is built from a strongly typed graph: fp32 and tf32 plans from the package's
own graphs (TF32 is allowed only for "tf32"), fp16 plans from float16 copies kept in the
package (`engines.trt_typed`). All plans share one timing cache, saved once. The manifest
records every plan, the graph it was built from, the profile index of every K, the
TensorRT flavour and version, the compute capabilities asked for, precision and layout;
`trtexec.sh` rebuilds and times every plan and profile with the command-line tool of the
flavour that built them (`trtexec_lines`).

A package is built only once every file of it is verified against its manifest, and every
plan records the sha256 of the graph it was built from, as hashed for the build.
"""

from __future__ import annotations

import contextlib
import importlib
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
from tqdm import tqdm

from rgtp.engines.base import LAYOUTS, EngineError
from rgtp.engines.trt_typed import fp16_graph, typed_weights
from rgtp.package.manifest import (
    PRIVATE_MODES,
    PUBLIC_MODES,
    GraphRecord,
    Manifest,
    package_file,
    record_files,
    sha256_file,
)
from rgtp.package.plan import BATCH
from rgtp.package.verify import external_data_problems, verify_package

PLAN_DIR = "trt"
TRTEXEC_SCRIPT = "trtexec.sh"
FLAVORS = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt_rtx_bindings"}  # flavour: module
# what a plan computes: float32 (TF32 off), float32 with TF32 matmuls/convolutions, or the
# float16 graph (`engines.trt_typed`)
PRECISIONS = ("fp32", "tf32", "fp16")


def import_tensorrt(flavor: str | None = None) -> tuple[ModuleType, str]:
    """The TensorRT Python module and its flavour: "tensorrt" or "tensorrt_rtx"; `flavor`
    asks for one (the loader asks for the flavour that built a package's plans).

    PyPI's `tensorrt` meta-package installs stubs where the real libraries are missing;
    those lack `Builder`, and we fall through to TensorRT-RTX.
    """
    for name in [flavor] if flavor else list(FLAVORS):
        if name not in FLAVORS:
            raise EngineError(f"unknown TensorRT flavour {name!r}; rgtp knows {list(FLAVORS)}")
        try:
            module = importlib.import_module(FLAVORS[name])
        except Exception:  # a stub package raises at import on machines without TensorRT
            continue
        if hasattr(module, "Builder"):
            return module, name
    wanted = {
        "tensorrt": "TensorRT 10/11 (`tensorrt`)",
        "tensorrt_rtx": "TensorRT-RTX (`pip install tensorrt-rtx-cu13-libs "
        "tensorrt-rtx-cu13-bindings`)",
    }
    raise EngineError(
        "no TensorRT: install "
        + (wanted[flavor] if flavor else " or ".join(wanted.values()))
        + (f"; this package's plans were built by {flavor}" if flavor else "")
    )


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"  # one of PRECISIONS
    layout: str = "per-stage"  # one of LAYOUTS
    timing_cache: Path | None = None
    # limit of the workspace memory pool in MiB, trtexec's --memPoolSize=workspace:N
    mem_pool_size: int | None = None
    # TensorRT-RTX only: target GPU architectures, e.g. ("SM89",); None = the current GPU,
    # or SM89 when there is none (ahead-of-time build).
    compute_capabilities: tuple[str, ...] | None = None
    # the largest batch (streams per stage call) the stage profiles take, and the one they
    # are tuned for: 1, the batch rgtp's TensorRT runtime runs; more only for plans that
    # another runtime batches (their activation memory grows with it)
    opt_batch: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")
        if self.layout not in LAYOUTS:
            raise EngineError(f"unknown plan layout {self.layout!r}; choose from {LAYOUTS}")
        if self.mem_pool_size is not None and self.mem_pool_size < 1:
            raise EngineError(
                f"the workspace pool limit is in MiB and at least 1, got {self.mem_pool_size}"
            )
        if isinstance(self.opt_batch, bool) or not isinstance(self.opt_batch, int):
            raise EngineError(f"opt_batch must be an integer, got {self.opt_batch!r}")
        if self.opt_batch < 1:
            raise EngineError(f"opt_batch must be at least 1, got {self.opt_batch}")

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"


Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the smallest, tuned-for and largest shape of every input."""

    min: Shapes
    opt: Shapes
    max: Shapes

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {
            which: {n: list(s) for n, s in shapes.items()}
            for which, shapes in (("min", self.min), ("opt", self.opt), ("max", self.max))
        }


@dataclass
class PlanJob:
    """One plan to build: its source graph and its optimization profiles."""

    name: str
    onnx_file: str
    profiles: list[Profile]
    ks: list[int] | None  # the K of each profile (stages), None for the graphs around them
    symbolic: bool = False  # built from a symbolic-K graph: one profile per K


def plan_jobs(
    manifest: Manifest, layout: str, opt_batch: int = 1, max_batch: int | None = None
) -> list[PlanJob]:
    """The plans of a package. Stage profiles span batches 1..`max_batch` (default: the
    package's), tuned at `opt_batch`; `build_trt` passes `max_batch=opt_batch`."""
    if opt_batch > manifest.plan.max_batch:
        raise EngineError(
            f"opt_batch {opt_batch} exceeds the package's max_batch {manifest.plan.max_batch}; "
            "export again "
            "with a larger --max-batch, or tune for a batch it runs"
        )
    max_batch = manifest.plan.max_batch if max_batch is None else max_batch
    jobs = []
    for rec in manifest.graphs:
        if rec.kind != "stage":  # embed, head, the family's extra graphs: static shapes
            jobs.append(PlanJob(rec.name, rec.file, [profile(rec)], None))
    for i in range(len(manifest.plan.stages)):
        fixed = sorted(manifest.stage_graphs(i), key=lambda g: g.k)
        if layout == "per-k":
            jobs += [
                PlanJob(g.name, g.file, [profile(g, opt_batch, max_batch)], [g.k]) for g in fixed
            ]
            continue
        symbolic = manifest.stage_graphs(i, symbolic=True)
        if not symbolic:
            raise EngineError(
                f"stage {i} has no symbolic-K graph; re-export without --no-symbolic, or build "
                "layout 'per-k'"
            )
        # the profile of a K takes the shapes of that K's static graph
        profiles = [profile(g, opt_batch, max_batch) for g in fixed]
        jobs.append(
            PlanJob(f"stage{i}", symbolic[0].file, profiles, [g.k for g in fixed], symbolic=True)
        )
    return jobs


def profile(rec: GraphRecord, opt_batch: int = 1, max_batch: int = 1) -> Profile:
    """The profile of a graph whose only symbolic axis is the stage graphs' batch axis B
    (none for the graphs around the stages): B from 1 to `max_batch`, tuned at `opt_batch`."""

    def at(batch: int) -> Shapes:
        return {t.name: t.concrete({BATCH: batch}) for t in rec.inputs}

    return Profile(at(1), at(opt_batch), at(max_batch))


class PlanBuilder:
    """One builder for every plan of a package, with one timing cache that every plan reads
    and extends (TensorRT; TensorRT-RTX has none: its timing cache calls are no-ops)."""

    def __init__(self, options: BuildOptions) -> None:
        self.trt, self.flavor = import_tensorrt()
        self.options = options
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.builder = self.trt.Builder(self.logger)
        self.cache = None
        path = options.timing_cache
        if self.flavor == "tensorrt":
            blob = path.read_bytes() if path and path.is_file() else b""
            self.cache = self.builder.create_builder_config().create_timing_cache(blob)
            if self.cache is None:
                raise EngineError(f"{path}: TensorRT cannot read this timing cache; delete it")
            if options.compute_capabilities:
                raise EngineError(
                    "TensorRT builds plans for the GPU it builds on; --compute-capability "
                    "targets TensorRT-RTX builds"
                )
        elif path:
            warnings.warn(
                "TensorRT-RTX keeps no timing cache: --timing-cache is ignored", stacklevel=2
            )
        self.targets = self._targets()

    def _targets(self) -> list[str]:
        """The compute capabilities to build for, as TensorRT-RTX names them ("SM89"); the
        current GPU ("CURRENT") when none are asked for and there is one."""
        if self.options.compute_capabilities:
            return list(self.options.compute_capabilities)
        return ["CURRENT" if _gpu_capability() else "SM89"]

    def target(self) -> dict[str, str]:
        """What the plans run on: device and compute capabilities (comma-separated).
        TensorRT builds for the GPU it builds on; TensorRT-RTX for the capabilities asked."""
        gpu = _gpu_capability()
        if self.flavor == "tensorrt" or self.targets == ["CURRENT"]:
            if gpu is None:
                raise EngineError("TensorRT builds plans on a CUDA GPU; none is visible")
            name, cap = gpu
            return {"device": name, "compute_capability": cap}
        return {
            "device": "none (ahead-of-time build)",
            "compute_capability": ",".join(self.targets),
        }

    def build(self, onnx_path: Path, profiles: list[Profile]) -> bytes:
        """A plan of the strongly typed network of `onnx_path` (its types are what runs)."""
        trt = self.trt
        typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = self.builder.create_network(0 if typed is None else 1 << int(typed))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise EngineError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
        plan = self.builder.build_serialized_network(network, self._config(network, profiles))
        if plan is None:
            raise EngineError(f"{onnx_path.name}: TensorRT failed to build a plan")
        return bytes(plan)

    def _config(self, network: Any, profiles: list[Profile]) -> Any:
        trt, opts = self.trt, self.options
        config = self.builder.create_builder_config()
        if opts.mem_pool_size:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.mem_pool_size << 20)
        if opts.precision != "tf32":  # on by default: fp32 convolutions and matmuls in TF32
            config.clear_flag(trt.BuilderFlag.TF32)
        if self.cache is not None and not config.set_timing_cache(self.cache, False):
            raise EngineError(
                f"{opts.timing_cache}: a timing cache of another GPU or TensorRT; delete it"
            )
        if self.flavor == "tensorrt_rtx":
            # the runtime hands every context its memory (`trt_context`) and captures CUDA
            # graphs, which a plan that allocates for itself would break
            config.set_flag(trt.BuilderFlag.REQUIRE_USER_ALLOCATION)
            config.num_compute_capabilities = len(self.targets)
            for i, cap in enumerate(self.targets):
                config.set_compute_capability(getattr(trt.ComputeCapability, cap), i)
        dynamic = any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs))
        if dynamic:
            for p in profiles:
                trt_profile = self.builder.create_optimization_profile()
                for name in p.min:
                    trt_profile.set_shape(name, p.min[name], p.opt[name], p.max[name])
                config.add_optimization_profile(trt_profile)
        return config

    def save_timing_cache(self) -> None:
        """The timing cache of every plan built, written once (replacing the file whole)."""
        path = self.options.timing_cache
        if self.cache is None or path is None:
            return
        blob = self.cache.serialize()
        if blob is None:
            raise EngineError("TensorRT cannot serialize the timing cache")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(bytes(blob))
        tmp.replace(path)


def _gpu_capability() -> tuple[str, str] | None:
    """The current CUDA GPU's name and compute capability ("8.9"), None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


@dataclass(frozen=True)
class Tool:
    """The command-line tool that reads a flavour's plans, at a TensorRT major version.

    trtexec 10.x builds a strongly typed network only when told (`--stronglyTyped`, which
    refuses --fp16/--bf16/--int8/--best); 11.x is strongly typed only and has no precision
    flags left. TensorRT-RTX's tool is `tensorrt_rtx`: strongly typed, no timing cache, and
    dynamic-shape kernels specialised as the runtime does (`--specializeStrategyDS`).
    """

    name: str  # "trtexec" or "tensorrt_rtx"
    major: int

    @property
    def rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


def tool_for(flavor: str, version: str) -> Tool:
    """The tool of the flavour and version that built a package's plans."""
    return Tool(
        "tensorrt_rtx" if flavor == "tensorrt_rtx" else "trtexec", int(version.split(".")[0])
    )


def trtexec_lines(
    job: PlanJob,
    plan_file: str,
    options: BuildOptions,
    tool: Tool = Tool("trtexec", 10),
    onnx_file: str | None = None,
) -> list[str]:
    """Commands that rebuild this plan from `onnx_file` (the typed graph it was built from;
    default the job's) and time each of its profiles, in `tool`'s flags."""

    def shapes(s: Shapes) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in shape)}" for n, shape in s.items())

    build = [tool.name, f"--onnx={onnx_file or job.onnx_file}", f"--saveEngine={plan_file}"]
    build.append("--skipInference")  # the timing lines below run it, per profile
    if tool.name == "trtexec" and tool.major == 10:
        build.append("--stronglyTyped")
    if options.precision != "tf32":
        build.append("--noTF32")
    if options.timing_cache and not tool.rtx:
        build.append(f"--timingCacheFile={options.timing_cache}")
    if options.mem_pool_size:
        build.append(f"--memPoolSize=workspace:{options.mem_pool_size}M")
    dynamic = job.ks is not None  # stage graphs: B symbolic, and K in a symbolic-K graph
    if dynamic:
        for index, p in enumerate(job.profiles):
            build += [
                f"--profile={index}",
                f"--minShapes={shapes(p.min)}",
                f"--optShapes={shapes(p.opt)}",
                f"--maxShapes={shapes(p.max)}",
            ]
    lines = [f"# {job.name}: build", " ".join(shlex.quote(a) for a in build)]
    for index, p in enumerate(job.profiles):
        label = f"K={job.ks[index]}" if job.ks else "static"
        run = [tool.name, f"--loadEngine={plan_file}"]
        if dynamic:
            run += [f"--shapes={shapes(p.opt)}", f"--useProfile={index}"]
        if tool.rtx:
            run.append("--specializeStrategyDS=eager")
        lines += [
            f"# {job.name}: time profile {index} ({label})",
            " ".join(shlex.quote(a) for a in run),
        ]
    return lines


def _old_plan_files(manifest: Manifest) -> list[str]:
    """The files of the plans (their typed graphs, their trtexec script) a rebuild replaces."""
    old = manifest.extra.get("trt") or {"plans": []}
    typed = list(old.get("typed_graphs", {}).values())
    return (
        [p["file"] for p in old["plans"]]
        + typed
        + [typed_weights(f) for f in typed]
        + ([old["trtexec"]] if "trtexec" in old else [])
    )


def _forget_old_plans(package: Path, manifest: Manifest) -> None:
    """A rebuild replaces the previous plans: remove their manifest records, then their
    files, so the package stays whole (without plans) if the build fails."""
    names = _old_plan_files(manifest)
    for name in names:
        manifest.files.pop(name, None)
    manifest.extra.pop("trt", None)
    manifest.save(package)
    for name in names:
        package_file(package, name).unlink(missing_ok=True)


def _source_graph(package: Path, manifest: Manifest, job: PlanJob) -> Path:
    """The ONNX graph of `job`, refused if its external data lies elsewhere than the
    (verified) weights file the manifest lists for it."""
    path = package_file(package, job.onnx_file)
    rec = next(g for g in manifest.graphs if g.file == job.onnx_file)
    problems = external_data_problems(onnx.load(str(path), load_external_data=False), rec)
    if problems:
        raise EngineError("; ".join(problems))
    return path


def build_trt(
    package: str | Path,
    options: BuildOptions,
    progress: bool = True,
    verify: bool = True,
    digest: str | None = None,
) -> dict[str, Any]:
    """Build every plan of a package; records them under the manifest's "trt" entry (so the
    package's digest changes: the manifest it ends with has the new one, `Manifest.digest`).

    Every file of the package but the plans being replaced is verified first (ManifestError
    naming the files that fail; `verify=False`: sizes only, with a warning); `digest`: the
    package digest pinned, any other manifest refused (`Manifest.load`)."""
    package = Path(package)
    manifest = Manifest.load(package, digest)
    int8 = manifest.quantization is not None
    if int8 and manifest.quantization["method"] != "static":
        # dynamic int8 graphs quantize activations per call (DynamicQuantizeLinear,
        # MatMulInteger): TensorRT runs int8 only from Q/DQ graphs with fixed scales
        raise EngineError(
            f"{package} holds {manifest.quantization['method']} int8 graphs, which TensorRT "
            "cannot build; quantize statically (Q/DQ, --int8-method static) or build from the "
            "float32 package (--precision fp16 for half precision)"
        )
    if int8 and options.precision != "fp32":
        # the Q/DQ graphs say which tensors are int8; the rest runs as typed (float32)
        raise EngineError(
            f"{package} holds static int8 (Q/DQ) graphs: build them as they are, with "
            f"--precision fp32, not {options.precision}"
        )
    hashes = verify_package(package, manifest, verify, skip=_old_plan_files(manifest))
    jobs = plan_jobs(manifest, options.layout, options.opt_batch, max_batch=options.opt_batch)
    sources = {job.onnx_file: _source_graph(package, manifest, job) for job in jobs}
    builder = PlanBuilder(options)
    target = builder.target()
    tool = tool_for(builder.flavor, builder.trt.__version__)
    _forget_old_plans(package, manifest)
    # new files are as readable as the package they join
    private = not package.stat().st_mode & 0o044
    dir_mode, file_mode = PRIVATE_MODES if private else PUBLIC_MODES
    plan_dir = package_file(package, PLAN_DIR)
    plan_dir.mkdir(exist_ok=True)
    plan_dir.chmod(dir_mode)
    written: list[str] = []  # every new file, plans and typed graphs
    typed: dict[str, str] = {}  # package graph: the typed graph its plans are built from
    plans, script = (
        [],
        [
            "#!/usr/bin/env bash",
            f"# {tool.name} equivalents of `rgtp build` ({builder.flavor} "
            f"{builder.trt.__version__}, {options.precision}); run from the package directory.",
            "set -euo pipefail",
        ],
    )
    try:
        for job in tqdm(jobs, desc="trt build", unit="plan", disable=not progress):
            if job.onnx_file not in typed:
                typed[job.onnx_file] = job.onnx_file
                if options.fp16:
                    half = f"{PLAN_DIR}/{Path(job.onnx_file).stem}.fp16.onnx"
                    typed[job.onnx_file] = half
                    written += [half, typed_weights(half)]
                    fp16_graph(sources[job.onnx_file], package_file(package, half))
            plan_file = f"{PLAN_DIR}/{job.name}.plan"
            blob = builder.build(package_file(package, typed[job.onnx_file]), job.profiles)
            written.append(plan_file)
            package_file(package, plan_file).write_bytes(blob)
            plans.append(
                {
                    "name": job.name,
                    "file": plan_file,
                    "onnx": job.onnx_file,
                    # provenance: the graph as verified for this build (hashed now if not)
                    "onnx_sha256": hashes.get(job.onnx_file) or sha256_file(sources[job.onnx_file]),
                    "profiles": {str(k): i for i, k in enumerate(job.ks)} if job.ks else None,
                    "shapes": [p.to_dict() for p in job.profiles],
                }
            )
            script += trtexec_lines(job, plan_file, options, tool, typed[job.onnx_file])
        builder.save_timing_cache()
    except BaseException:  # leave no file the manifest does not list
        for name in written:
            package_file(package, name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only if empty
            plan_dir.rmdir()
        raise
    for name in written:
        package_file(package, name).chmod(file_mode)
    script_path = package_file(package, TRTEXEC_SCRIPT)
    script_path.write_text("\n".join(script) + "\n")
    script_path.chmod(dir_mode)  # executable, as readable as the directories
    info = {
        "flavor": builder.flavor,
        "version": builder.trt.__version__,
        **target,
        # what the plans compute: "fp32" with or without TF32, "fp16" (typed graphs), or
        # "int8" (the package's Q/DQ graphs, built strongly typed: int8 where they say)
        "precision": "int8" if int8 else "fp16" if options.fp16 else "fp32",
        "tf32": options.precision == "tf32",
        "layout": options.layout,
        "plans": plans,
        # package graph: the typed graph its plans were built from, where they differ
        "typed_graphs": {src: f for src, f in typed.items() if f != src},
        "trtexec": TRTEXEC_SCRIPT,
    }
    manifest.extra["trt"] = info
    manifest.files.update(record_files(package, [*written, TRTEXEC_SCRIPT]))
    manifest.save(package)
    return info
