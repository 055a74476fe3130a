"""`rgtp export`: a detector and a stage plan -> a directory of ONNX graphs and a manifest.

Layout:
    manifest.json           every graph's interface and every file's sha256
    model.safetensors       the detector's weights (torch backend, `rgtp check` reference)
    embed.onnx, head.onnx   (+ embed.weights, head.weights)
    stage{i}_k{K}.onnx      one static graph per stage and K bucket
    stage{i}_kK.onnx        the same stage with a symbolic K axis (TensorRT profiles)
    stage{i}.weights        external data shared by all variants of stage i
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import tempfile
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

from rgtp.export.manifest import GraphRecord, Manifest, record_files
from rgtp.export.onnx_graphs import DEFAULT_OPSET, SYMBOLIC_K, example_inputs, export_graph
from rgtp.export.weights_file import SharedWeights
from rgtp.models.checkpoints import save_weights
from rgtp.models.detector import Detector
from rgtp.models.plan import GraphSpec, StagePlan
from rgtp.models.stages import EmbedStage, HeadStage, PrunedStage

MODEL_WEIGHTS = "model.safetensors"


def _versions(opset: int) -> dict[str, str]:
    out = {"opset": str(opset)}
    for pkg in ("rgtp", "torch", "onnx", "onnxscript"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _write_graph(
    model: onnx.ModelProto, directory: Path, file: str, weights: SharedWeights
) -> None:
    weights.externalize(model)
    onnx.save(model, str(directory / file))


def export_package(
    detector: Detector,
    plan: StagePlan,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    symbolic: bool = True,
    force: bool = False,
    progress: bool = True,
) -> Manifest:
    """Export every graph of `plan` into `out` (created; an existing non-empty directory
    needs `force`). Work happens in a temporary sibling directory that replaces `out` only
    once everything is written, so a failed export never leaves a half package behind."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    if detector.cfg != plan.config:
        raise ValueError("the detector's config differs from the plan's")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _export_into(detector.eval(), plan, tmp, opset, symbolic, progress)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_into(
    detector: Detector,
    plan: StagePlan,
    directory: Path,
    opset: int,
    symbolic: bool,
    progress: bool,
) -> Manifest:
    n = plan.num_tokens
    jobs: list[tuple[str, int | None, int | str | None]] = [("embed", None, None)]
    for i in range(len(plan.stages)):
        jobs += [("stage", i, k) for k in plan.buckets]
        if symbolic:
            jobs.append(("stage", i, SYMBOLIC_K))
    jobs.append(("head", None, None))

    save_weights(detector, directory / MODEL_WEIGHTS)
    records: list[GraphRecord] = []
    weight_files: dict[str, SharedWeights] = {}
    stage_modules = {
        i: PrunedStage(detector.backbone, b, plan.fusion) for i, b in enumerate(plan.stages)
    }
    bar = tqdm(jobs, desc="export", unit="graph", disable=not progress)
    try:
        for kind, stage, k in bar:
            if kind == "embed":
                spec, module = plan.embed_spec(), EmbedStage(detector)
                args = (torch.rand(spec.inputs[0].shape) * 255,)
                wname = "embed.weights"
            elif kind == "head":
                spec, module = plan.head_spec(), HeadStage(detector)
                args = (torch.randn(n, plan.dim),)
                wname = "head.weights"
            else:
                assert stage is not None and k is not None
                spec, module = plan.stage_spec(stage, k), stage_modules[stage]
                # symbolic graphs are traced at a K unlike any bucket, so no size specialises
                trace_k = k if isinstance(k, int) else max(2, n // 2 + 1)
                args = example_inputs(spec, trace_k, n)
                wname = f"stage{stage}.weights"
            bar.set_postfix_str(spec.name)
            model = export_graph(module, spec, args, symbolic_k=isinstance(k, str), opset=opset)
            if wname not in weight_files:
                weight_files[wname] = SharedWeights(directory / wname)
            file = f"{spec.name}.onnx"
            _write_graph(model, directory, file, weight_files[wname])
            records.append(_record(spec, kind, file, wname, plan, stage, k))
    finally:
        for w in weight_files.values():
            w.close()
    files = [MODEL_WEIGHTS, *weight_files, *(r.file for r in records)]
    manifest = Manifest(
        plan=plan,
        graphs=records,
        files=record_files(directory, files),
        model_weights=MODEL_WEIGHTS,
        opset=opset,
        versions=_versions(opset),
    )
    manifest.save(directory)
    return manifest


def _record(
    spec: GraphSpec,
    kind: str,
    file: str,
    weights: str,
    plan: StagePlan,
    stage: int | None,
    k: int | str | None,
) -> GraphRecord:
    return GraphRecord(
        name=spec.name,
        kind=kind,
        file=file,
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        stage=stage,
        blocks=list(plan.stages[stage]) if stage is not None else None,
        k=k,
        weights=weights,
    )
