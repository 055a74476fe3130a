"""An int8 package from a float32 one, without tracing the model again.

`rgtp export --precision int8` quantizes each graph as it is traced; this does the same to
a package already exported (and verified) — e.g. to compare precisions on one export, or to
lower a package whose model is no longer at hand. Both write through `export.quantize`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
from tqdm import tqdm

from rgtp.export.int8_caches import (
    attention_qdq,
    cache_scales,
    calibrated_scale,
    int8_cache_io,
)
from rgtp.export.onnx_graphs import ExportError
from rgtp.export.package import (
    _sigterm_raises,
    _work_dir,
    destination,
    move_into_place,
    set_modes,
)
from rgtp.export.quantize import Feeds, Int8Settings, quantize_graph
from rgtp.export.weights_file import SharedWeights
from rgtp.package.manifest import MANIFEST, GraphRecord, Manifest, package_file, record_files
from rgtp.package.plan import TensorSpec
from rgtp.package.verify import load_verified


def quantize_package(
    source: str | Path,
    out: str | Path,
    settings: Int8Settings | None = None,
    force: bool = False,
    progress: bool = True,
    calibration: Feeds | None = None,
    calibration_source: str = "",
    reference: bool = True,
) -> Manifest:
    """Write to `out` the package `source` (float32, verified first) with rgtp's graphs in
    int8. The plan, graph interfaces and reference weights are the source's (`reference`
    False, or a source without them: none, as `rgtp export --no-reference`); the manifest
    records the quantization. Written whole or not at all, like `export_package`.

    Static quantization takes `calibration`: per graph, the feeds it was called with
    (`runtime.calibration.record_feeds`; a stage's symbolic-K graph is calibrated on its
    fixed-K graphs' feeds together), and `calibration_source` says what video they came
    from (recorded in the manifest)."""
    settings = settings or Int8Settings()
    source = Path(source)
    manifest = load_verified(source, True)
    if manifest.quantization is not None:
        raise ExportError(f"{source} is already {manifest.precision}; quantize a float32 package")
    user_head = manifest.plan.head == "onnx"
    out = destination(out, force)
    with _sigterm_raises():
        tmp = _work_dir(out)
        try:
            written = _quantize_into(
                manifest,
                source,
                tmp,
                settings,
                user_head,
                progress,
                calibration,
                calibration_source,
                reference,
            )
            set_modes(tmp)
            move_into_place(tmp, destination(out, force))
            return written
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _quantize_into(
    manifest: Manifest,
    source: Path,
    directory: Path,
    settings: Int8Settings,
    user_head: bool,
    progress: bool,
    calibration: Feeds | None,
    calibration_source: str,
    reference: bool,
) -> Manifest:
    # the float32 reference, as it was: int8 graphs are compared with it (`rgtp check`)
    model_weights = manifest.model_weights if reference else None
    if model_weights is not None:
        shutil.copyfile(package_file(source, model_weights), directory / model_weights)
    weight_files: dict[str, SharedWeights] = {}
    quantized: list[str] = []
    records = {r.name: r for r in manifest.graphs}
    scales: dict[str, float] = {}  # int8 caches: each one's scale
    try:
        with tqdm(
            total=len(manifest.graphs), desc="int8", unit="graph", disable=not progress
        ) as bar:
            for group in _by_stage(manifest.graphs):
                models = {}
                for rec in group:
                    graph = onnx.load(str(package_file(source, rec.file)))  # external data in
                    if not (rec.kind == "head" and user_head):
                        feeds = (
                            None if calibration is None else _feeds_of(manifest, rec, calibration)
                        )
                        graph = quantize_graph(graph, settings, feeds)
                        quantized.append(rec.name)
                    models[rec.name] = graph
                    bar.update()
                if settings.method == "static" and calibration is not None:
                    own = _int8_caches(manifest, group, models, calibration)
                    if own:
                        io = manifest.plan.cache_io(group[0].stage)
                        int8 = set(own) | {io[cache] for cache in own}
                        for rec in group:
                            records[rec.name] = _retyped(rec, int8)
                    scales |= own
                for rec in group:
                    graph = models.pop(rec.name)
                    wname = rec.weights or f"{rec.name}.weights"
                    if wname not in weight_files:
                        weight_files[wname] = SharedWeights(directory / wname)
                    weight_files[wname].externalize(graph)
                    onnx.save(graph, str(directory / rec.file))
    finally:
        for w in weight_files.values():
            w.close()
    graphs = [
        dataclasses.replace(records[r.name], weights=r.weights or f"{r.name}.weights")
        for r in manifest.graphs
    ]
    files = [*([model_weights] if model_weights else []), *weight_files, *(r.file for r in graphs)]
    written = dataclasses.replace(
        manifest,
        model_weights=model_weights,
        graphs=graphs,
        files=record_files(directory, files),
        # TensorRT plans are built from the graphs they were built from: not these
        extra={k: v for k, v in manifest.extra.items() if k != "trt"},
        quantization=settings.record(
            quantized, _calibration_record(calibration, calibration_source), scales
        ),
    )
    written.save(directory)
    return written


def _by_stage(records: list[GraphRecord]) -> list[list[GraphRecord]]:
    """The graphs in groups quantized together: each stage's graphs (every K bucket reads
    and writes the same caches), and every other graph alone."""
    stages: dict[int, list[GraphRecord]] = {}
    groups: list[list[GraphRecord]] = []
    for rec in records:
        if rec.kind == "stage" and rec.stage is not None:
            if rec.stage not in stages:
                stages[rec.stage] = []
                groups.append(stages[rec.stage])
            stages[rec.stage].append(rec)
        else:
            groups.append([rec])
    return groups


def _int8_caches(
    manifest: Manifest,
    group: list[GraphRecord],
    models: dict[str, onnx.ModelProto],
    calibration: Feeds,
) -> dict[str, float]:
    """The caches of a stage that its static int8 graphs (`models`, the whole `group`) take
    in int8 (`export.int8_caches`), rewritten so; returns each one's scale. A stage holds
    its caches in int8 where every graph of it reads every one of them into attention's
    Q/DQ pairs as `int8_caches.attention_qdq` allows; else none."""
    stage = group[0].stage
    if group[0].kind != "stage" or stage is None:
        return {}
    io = manifest.plan.cache_io(stage)
    feeds = [call for rec in group for call in calibration.get(rec.name, [])]
    held = cache_scales(feeds, list(io))
    if set(held) != set(io) or not all(
        attention_qdq(m, cache) for m in models.values() for cache in io
    ):
        return {}  # the stage's caches are one tensor of the runtime's: all int8, or none
    scales = {
        cache: max(held[cache], *(calibrated_scale(m, cache) for m in models.values()))
        for cache in io
    }
    for model in models.values():
        int8_cache_io(model, scales, io)
    return scales


def _retyped(rec: GraphRecord, int8: set[str]) -> GraphRecord:
    """`rec` with its tensors named in `int8` (caches, their fresh rows) declared int8."""

    def own(ts: list[TensorSpec]) -> list[TensorSpec]:
        return [dataclasses.replace(t, dtype="int8") if t.name in int8 else t for t in ts]

    return dataclasses.replace(rec, inputs=own(rec.inputs), outputs=own(rec.outputs))


def _feeds_of(manifest: Manifest, rec: GraphRecord, calibration: Feeds) -> list:
    """The calibration feeds of one graph: its own, or for a symbolic-K stage graph, its
    stage's fixed-K graphs' together (as many as the most any one graph has)."""
    if not (rec.kind == "stage" and rec.symbolic):
        return list(calibration.get(rec.name, []))
    names = [g.name for g in manifest.stage_graphs(rec.stage)]
    pooled = [call for name in names for call in calibration.get(name, [])]
    most = max((len(calibration.get(name, [])) for name in names), default=0)
    step = max(1, len(pooled) // max(1, most))
    return pooled[::step][:most]


def _calibration_record(calibration: Feeds | None, source: str) -> dict | None:
    if calibration is None:
        return None
    return {
        "source": source or "unspecified",
        "method": "minmax",
        "calls_per_graph": max((len(v) for v in calibration.values()), default=0),
    }


def ensure_int8(
    source: str | Path,
    out: str | Path,
    settings: Int8Settings | None = None,
    progress: bool = True,
    calibrate: Callable[[], tuple[Feeds, str]] | None = None,
) -> Path:
    """`out` holding `source` quantized with `settings`: reused where it already does (same
    plan, same reference weights, same quantization), else quantized there (replacing an
    earlier rgtp package). Static quantization calls `calibrate` for the feeds and a line
    naming their video, only when it has to quantize. `out` holds the source's reference
    weights, so that it can be checked against them."""
    settings = settings or Int8Settings()
    out = Path(out)
    if (out / MANIFEST).is_file():
        have, src = Manifest.load(out), Manifest.load(source)
        q = have.quantization or {}
        # what the settings say; the graphs, calibration and cache scales are the data's
        want = settings.record(q.get("graphs", []), q.get("calibration"), q.get("int8_caches"))
        if (
            have.plan == src.plan
            and have.model_weights is not None
            and src.model_weights is not None
            and have.files[have.model_weights] == src.files[src.model_weights]
            and {k: v for k, v in q.items() if k != "tool"}
            == {k: v for k, v in want.items() if k != "tool"}
        ):
            return out
    feeds, where = (None, "") if settings.method == "dynamic" else _calibrated(calibrate)
    quantize_package(source, out, settings, True, progress, feeds, where)
    return out


def _calibrated(calibrate: Callable[[], tuple[Feeds, str]] | None) -> tuple[Feeds, str]:
    if calibrate is None:
        raise ExportError("static int8 needs calibration video; dynamic needs none")
    return calibrate()
