"""`rgtp build --backend trt`: TensorRT plans for an exported package.

One builder for TensorRT 10/11 (`tensorrt`) and TensorRT-RTX (`tensorrt_rtx_bindings`, which
builds ahead of time on a machine without a GPU). In the default layout, "per-stage", every
stage becomes one plan from its symbolic-K graph, holding one optimization profile per K
bucket with K fixed (the shapes of that K's static graph), so its weights exist once;
layout "per-k" builds one plan per (stage, K) from the static graphs instead. Every stage
profile spans batches of 1..`max_batch` streams (the plan's), tuned at `opt_batch`. The
manifest records every plan, the profile index of every K, the TensorRT version, device,
precision and layout, and `trtexec.sh` holds the equivalent trtexec command for every plan
and profile.

A package is built only once every file of it is verified against its manifest, and every
plan records the sha256 of the graph it was built from, as hashed for the build.
"""

from __future__ import annotations

import contextlib
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
from tqdm import tqdm

from rgtp.engines.base import LAYOUTS, EngineError
from rgtp.models.manifest import (
    PRIVATE_MODES,
    PUBLIC_MODES,
    GraphRecord,
    Manifest,
    package_file,
    record_files,
    sha256_file,
)
from rgtp.models.package_verify import external_data_problems, verify_package
from rgtp.models.plan import BATCH

PLAN_DIR = "trt"
TRTEXEC_SCRIPT = "trtexec.sh"


def import_tensorrt() -> tuple[ModuleType, str]:
    """The TensorRT Python module and its flavour: "tensorrt" or "tensorrt_rtx".

    PyPI's `tensorrt` meta-package installs stubs where the real libraries are missing;
    those lack `Builder`, and we fall through to TensorRT-RTX.
    """
    try:
        import tensorrt as trt

        if hasattr(trt, "Builder"):
            return trt, "tensorrt"
    except Exception:  # a stub package raises at import on machines without TensorRT
        pass
    try:
        import tensorrt_rtx_bindings as trt_rtx

        return trt_rtx, "tensorrt_rtx"
    except ImportError:
        raise EngineError(
            "no TensorRT: install TensorRT 10/11 (`tensorrt`) or TensorRT-RTX "
            "(`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`)"
        ) from None


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    layout: str = "per-stage"  # one of LAYOUTS
    timing_cache: Path | None = None
    # limit of the workspace memory pool in MiB, trtexec's --memPoolSize=workspace:N
    mem_pool_size: int | None = None
    # TensorRT-RTX only: target GPU architectures, e.g. ("SM89",); None = the current GPU,
    # or SM89 when there is none (ahead-of-time build).
    compute_capabilities: tuple[str, ...] | None = None
    # the batch (streams per stage call) the stage profiles are tuned for: 1 for the
    # latency of one stream; a serving box that batches its cameras tunes for its batch
    opt_batch: int = 1

    def __post_init__(self) -> None:
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


def plan_jobs(manifest: Manifest, layout: str, opt_batch: int = 1) -> list[PlanJob]:
    max_batch = manifest.plan.max_batch
    if opt_batch > max_batch:
        raise EngineError(
            f"opt_batch {opt_batch} exceeds the package's max_batch {max_batch}; export again "
            "with a larger --max-batch, or tune for a batch it runs"
        )
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


def _fp16_copy(src: Path, workdir: Path) -> Path:
    """The graph with float16 weights and arithmetic (fp32 inputs/outputs), for builders
    with no FP16 flag (TensorRT-RTX is strongly typed)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))  # with its external weights
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    out = workdir / f"{src.stem}.fp16.onnx"
    onnx.save(half, str(out), save_as_external_data=True, location=f"{src.stem}.fp16.weights")
    return out


class PlanBuilder:
    def __init__(self, options: BuildOptions) -> None:
        self.trt, self.flavor = import_tensorrt()
        self.options = options
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.builder = self.trt.Builder(self.logger)
        self.cache_blob = b""
        if options.timing_cache and options.timing_cache.is_file():
            self.cache_blob = options.timing_cache.read_bytes()
        self._cache = None

    @property
    def strongly_typed(self) -> bool:
        return not hasattr(self.trt.BuilderFlag, "FP16")

    def target(self) -> dict[str, str]:
        """What the plans are built for: device name and compute capability."""
        try:
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                return {
                    "device": torch.cuda.get_device_name(),
                    "compute_capability": f"{major}.{minor}",
                }
        except ImportError:
            pass
        caps = self.options.compute_capabilities or ("SM89",)
        return {"device": "none (ahead-of-time build)", "compute_capability": ",".join(caps)}

    def build(self, onnx_path: Path, profiles: list[Profile]) -> bytes:
        trt = self.trt
        flags = 0
        if self.options.fp16 and self.strongly_typed:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = self.builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        with tempfile.TemporaryDirectory() as tmp:
            path = onnx_path
            if self.options.fp16 and self.strongly_typed:
                path = _fp16_copy(onnx_path, Path(tmp))
            if not parser.parse_from_file(str(path)):
                errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
                raise EngineError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
            config = self._config(network, profiles)
            plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"{onnx_path.name}: TensorRT failed to build a plan")
        self._cache = config.get_timing_cache() if hasattr(config, "get_timing_cache") else None
        return bytes(plan)

    def _config(self, network: Any, profiles: list[Profile]) -> Any:
        trt, opts = self.trt, self.options
        config = self.builder.create_builder_config()
        if opts.mem_pool_size:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.mem_pool_size << 20)
        if opts.fp16 and not self.strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        if self.flavor == "tensorrt_rtx":
            caps = opts.compute_capabilities
            if caps is None and self.target()["device"].startswith("none"):
                caps = ("SM89",)
            if caps:
                config.num_compute_capabilities = len(caps)
                for i, cap in enumerate(caps):
                    config.set_compute_capability(getattr(trt.ComputeCapability, cap), i)
        cache = config.create_timing_cache(self.cache_blob)
        config.set_timing_cache(cache, False)
        dynamic = any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs))
        if dynamic:
            for p in profiles:
                trt_profile = self.builder.create_optimization_profile()
                for name in p.min:
                    trt_profile.set_shape(name, p.min[name], p.opt[name], p.max[name])
                config.add_optimization_profile(trt_profile)
        return config

    def save_timing_cache(self) -> None:
        if self.options.timing_cache and self._cache is not None:
            self.options.timing_cache.write_bytes(bytes(self._cache.serialize()))


def trtexec_lines(job: PlanJob, plan_file: str, options: BuildOptions) -> list[str]:
    """trtexec commands that rebuild this plan and time each of its profiles."""

    def shapes(s: Shapes) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in shape)}" for n, shape in s.items())

    common = []
    if options.fp16:
        common.append("--fp16")
    if options.timing_cache:
        common.append(f"--timingCacheFile={options.timing_cache}")
    if options.mem_pool_size:
        common.append(f"--memPoolSize=workspace:{options.mem_pool_size}M")
    build = ["trtexec", f"--onnx={job.onnx_file}", f"--saveEngine={plan_file}", *common]
    if job.symbolic or job.profiles[0].min != job.profiles[0].max:
        for p in job.profiles:  # one --minShapes/--optShapes/--maxShapes triple per profile
            build += [
                f"--minShapes={shapes(p.min)}",
                f"--optShapes={shapes(p.opt)}",
                f"--maxShapes={shapes(p.max)}",
            ]
    lines = [f"# {job.name}: build", " ".join(shlex.quote(a) for a in build)]
    for index, p in enumerate(job.profiles):
        label = f"K={job.ks[index]}" if job.ks else "static"
        run = [
            "trtexec",
            f"--loadEngine={plan_file}",
            f"--shapes={shapes(p.opt)}",
            f"--profile={index}",
        ]
        lines += [
            f"# {job.name}: time profile {index} ({label})",
            " ".join(shlex.quote(a) for a in run),
        ]
    return lines


def _old_plan_files(manifest: Manifest) -> list[str]:
    """The files of the plans (and their trtexec script) a rebuild replaces."""
    old = manifest.extra.get("trt") or {"plans": []}
    return [p["file"] for p in old["plans"]] + ([old["trtexec"]] if "trtexec" in old else [])


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
    package: str | Path, options: BuildOptions, progress: bool = True, verify: bool = True
) -> dict[str, Any]:
    """Build every plan of a package; records them under the manifest's "trt" entry.

    Every file of the package but the plans being replaced is verified first (ManifestError
    naming the files that fail; `verify=False`: sizes only, with a warning)."""
    package = Path(package)
    manifest = Manifest.load(package)
    hashes = verify_package(package, manifest, verify, skip=_old_plan_files(manifest))
    jobs = plan_jobs(manifest, options.layout, options.opt_batch)
    sources = {job.onnx_file: _source_graph(package, manifest, job) for job in jobs}
    builder = PlanBuilder(options)
    _forget_old_plans(package, manifest)
    # new files are as readable as the package they join
    private = not package.stat().st_mode & 0o044
    dir_mode, file_mode = PRIVATE_MODES if private else PUBLIC_MODES
    plan_dir = package_file(package, PLAN_DIR)
    plan_dir.mkdir(exist_ok=True)
    plan_dir.chmod(dir_mode)
    plans, script = (
        [],
        [
            "#!/usr/bin/env bash",
            "# trtexec equivalents of `rgtp build`; run from the package directory.",
            "set -euo pipefail",
        ],
    )
    try:
        for job in tqdm(jobs, desc="trt build", unit="plan", disable=not progress):
            plan_file = f"{PLAN_DIR}/{job.name}.plan"
            blob = builder.build(sources[job.onnx_file], job.profiles)
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
            package_file(package, plan_file).write_bytes(blob)
            package_file(package, plan_file).chmod(file_mode)
            script += trtexec_lines(job, plan_file, options)
    except BaseException:  # leave no file the manifest does not list
        for p in plans:
            package_file(package, p["file"]).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only if empty
            plan_dir.rmdir()
        raise
    builder.save_timing_cache()
    script_path = package_file(package, TRTEXEC_SCRIPT)
    script_path.write_text("\n".join(script) + "\n")
    script_path.chmod(dir_mode)  # executable, as readable as the directories
    info = {
        "flavor": builder.flavor,
        "version": builder.trt.__version__,
        **builder.target(),
        "precision": "fp16" if options.fp16 else "fp32",
        "layout": options.layout,
        "plans": plans,
        "trtexec": TRTEXEC_SCRIPT,
    }
    manifest.extra["trt"] = info
    manifest.files.update(record_files(package, [p["file"] for p in plans] + [TRTEXEC_SCRIPT]))
    manifest.save(package)
    return info
