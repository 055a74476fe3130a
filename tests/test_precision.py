"""int8 packages: what quantization lowers, what it keeps, and how a package says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rgtp.cli import build_parser, main
from rgtp.cli.export import _export_static_int8
from rgtp.core.selection import FixedKeep
from rgtp.engines.base import EngineError
from rgtp.engines.trt_build import BuildOptions, build_trt
from rgtp.export.check import INT8_REL_L2, check_package
from rgtp.export.ensure import ensure_package
from rgtp.export.onnx_graphs import ExportError
from rgtp.export.package import export_package
from rgtp.export.quantize import Int8Settings, QuantizeError, int8_settings, quantize_graph
from rgtp.export.quantized_package import quantize_package
from rgtp.package.manifest import Manifest
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.runtime.calibration import record_feeds
from rgtp.runtime.video import write_video
from tests.conftest import synthvid_frames


def _two_matmuls() -> onnx.ModelProto:
    """y = (x W) (x W)^T: one matmul by a constant weight, one of activations by activations."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "ht"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_only_weight_matmuls_are_quantized() -> None:
    model = _two_matmuls()
    int8 = quantize_graph(model, Int8Settings())
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("MatMulInteger") == 1  # x W
    assert ops.count("MatMul") == 1  # h h^T: activations stay float32
    assert [i.name for i in int8.graph.input] == ["x"]
    assert [o.name for o in int8.graph.output] == ["y"]
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    ref, got = _run(model, x), _run(int8, x)
    assert not np.array_equal(ref, got)  # it did lower the arithmetic
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < INT8_REL_L2


def test_static_int8_is_calibrated_qdq() -> None:
    model = _two_matmuls()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(4)]
    with pytest.raises(QuantizeError, match="calibration"):
        quantize_graph(model, Int8Settings("static"))
    int8 = quantize_graph(model, Int8Settings("static", per_channel=True), feeds)
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # Q/DQ, not MatMulInteger
    # symmetric activation scales: every zero point is 0 (what TensorRT takes)
    zero_points = [
        numpy_helper.to_array(i) for i in int8.graph.initializer if i.name.endswith("zero_point")
    ]
    assert zero_points and all((z == 0).all() for z in zero_points)
    x = feeds[0]["x"]
    ref, got = _run(model, x), _run(int8, x)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < INT8_REL_L2


def test_calibration_records_each_graphs_feeds(pipe, frames) -> None:
    engines = pipe.engines
    before = (engines.embed, engines.head, [dict(s) for s in engines.stages])
    n = pipe.plan.num_tokens
    feeds = record_feeds(pipe, [frames[:3]], ks=[n // 4], per_graph=2)
    assert (engines.embed, engines.head, engines.stages) == before  # put back as it was
    assert len(feeds["embed"]) == 2 and len(feeds["head"]) == 2
    for i in range(len(pipe.plan.stages)):
        pruned = feeds[pipe.plan.stage_spec(i, n // 4).name]
        reset = feeds[pipe.plan.stage_spec(i, n).name]  # the dense first frame
        assert len(pruned) == 2 and len(reset) == 1
        names = [t.name for t in pipe.plan.stage_spec(i, n // 4).inputs]
        assert list(pruned[0]) == names
        assert all(isinstance(a, np.ndarray) for a in pruned[0].values())


def test_precisions_and_methods_are_checked() -> None:
    assert int8_settings("fp32") is None
    assert int8_settings("int8", per_channel=True) == Int8Settings(per_channel=True)
    with pytest.raises(QuantizeError, match="fp32"):
        int8_settings("bf16")
    assert int8_settings("int8", method="static") == Int8Settings("static")
    with pytest.raises(QuantizeError, match="dynamic"):
        Int8Settings(method="entropy")
    with pytest.raises(QuantizeError, match="operator"):
        Int8Settings(op_types=())


def test_export_records_the_precision(tmp_path, tiny_detector, quick_export) -> None:
    plan = StagePlan.create(tiny_detector.cfg, [49], "per-global")
    fp32 = export_package(tiny_detector, plan, tmp_path / "fp32", progress=False)
    int8 = export_package(
        tiny_detector, plan, tmp_path / "int8", progress=False, int8=Int8Settings()
    )
    assert fp32.precision == "fp32" and fp32.quantization is None
    loaded = Manifest.load(tmp_path / "int8")
    assert loaded.precision == int8.precision == "int8"
    assert loaded.quantization["method"] == "dynamic"
    assert sorted(loaded.quantization["graphs"]) == sorted(g.name for g in loaded.graphs)
    # a package is reused only at the precision asked for
    with pytest.raises(ExportError, match="its graphs are int8, not fp32"):
        ensure_package(tiny_detector, plan, tmp_path / "int8", progress=False)
    assert ensure_package(
        tiny_detector, plan, tmp_path / "int8", progress=False, int8=Int8Settings()
    ) == (tmp_path / "int8")
    # TensorRT builds int8 only from Q/DQ graphs with fixed scales
    with pytest.raises(EngineError, match="dynamic int8 graphs, which TensorRT cannot build"):
        build_trt(tmp_path / "int8", BuildOptions(), progress=False)


@pytest.fixture(scope="module")
def int8_package(small_packages, tmp_path_factory):
    path, det, plan = small_packages["a"]
    out = tmp_path_factory.mktemp("int8") / "pkg"
    quantize_package(path, out, progress=False)
    return path, out, det, plan


def test_int8_package_is_smaller_and_checks(int8_package) -> None:
    fp32, int8, _, _ = int8_package
    a, b = Manifest.load(fp32), Manifest.load(int8)
    assert b.plan == a.plan and b.precision == "int8"
    stage_bytes = [
        sum(m.files[f]["bytes"] for f in m.files if f.startswith("stage") and ".weights" in f)
        for m in (a, b)
    ]
    assert stage_bytes[1] < 0.3 * stage_bytes[0]  # int8 weights: a quarter of float32's
    report = check_package(int8, progress=False)
    assert report.passed, report.problems
    stages = [g for g in report.graphs if g.name.startswith("stage")]
    assert stages and all(0 < g.rel_l2 < INT8_REL_L2 for g in stages)
    assert all(g.limit.startswith("int8") for g in stages)
    # dynamic int8 leaves the convolutions float32: ONNX Runtime's ConvInteger is slower
    assert b.quantization["op_types"] == ["MatMul"]
    head = {n.op_type for n in onnx.load(str(int8 / "head.onnx")).graph.node}
    assert "Conv" in head and "ConvInteger" not in head
    with pytest.raises(ExportError, match="already int8"):
        quantize_package(int8, int8.with_name("again"), progress=False)


def test_int8_runs_the_float32_method(int8_package) -> None:
    """The graphs are int8; the runtime's arithmetic between them is not: at K = N both
    pipelines keep every token, and pruned frames keep nearly the same ones."""
    fp32, int8, _, _ = int8_package
    frames = synthvid_frames(5)
    kept = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        pipe = Pipeline.load(path, "ort")
        assert pipe.engines.dtype == torch.float32
        stream = pipe.new_stream(policy=FixedKeep(64), reset_every=0)
        kept[name] = [stream.step(f).keep for f in frames]
    same = [
        len(set(a.tolist()) & set(b.tolist())) / len(a)
        for a, b in zip(kept["fp32"][1:], kept["int8"][1:], strict=True)
    ]
    assert min(same) > 0.8, same


def test_static_int8_plans_build_strongly_typed(tiny_package, frames, tmp_path) -> None:
    """TensorRT builds a static int8 package from its Q/DQ graphs as they are (strongly
    typed: int8 where they say), and its trtexec script asks for no precision."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")
    feeds = record_feeds(Pipeline.load(tiny_package, "ort"), [frames], per_graph=2)
    pkg = tmp_path / "int8"
    quantize_package(
        tiny_package,
        pkg,
        Int8Settings("static", per_channel=True),
        progress=False,
        calibration=feeds,
        calibration_source="the test's frames",
    )
    assert Manifest.load(pkg).quantization["calibration"]["source"] == "the test's frames"
    with pytest.raises(EngineError, match="as they are"):
        build_trt(pkg, BuildOptions(precision="fp16"), progress=False)
    info = build_trt(pkg, BuildOptions(), progress=False)
    assert info["precision"] == "int8" and info["typed_graphs"] == {}
    assert all((pkg / p["file"]).stat().st_size > 0 for p in info["plans"])
    script = (pkg / info["trtexec"]).read_text()
    assert "--int8" not in script and "--fp16" not in script


def test_export_int8_options_are_checked(capsys) -> None:
    for args in (
        ["--precision", "int8", "--int8-method", "static"],  # no calibration video
        ["--precision", "int8", "--calibration", "clip.mp4"],  # dynamic needs none
        ["--calibration", "clip.mp4"],  # fp32
    ):
        assert main(["export", "--random-init", "--out", "never", *args]) == 2
        assert "--calibration VIDEO goes with" in capsys.readouterr().err


def test_export_static_int8_from_a_video(tiny_package, tmp_path) -> None:
    """`rgtp export --precision int8 --int8-method static --calibration VIDEO`: it exports
    float32 beside --out (here: a copy of the shared package stands in for the trace),
    calibrates through it on the video's frames, and leaves only the int8 package."""
    video = tmp_path / "clip.mp4"
    write_video(video, synthvid_frames(4, size=224), fps=4)
    out = tmp_path / "pkg"
    argv = ["export", "--random-init", "--quiet", "--precision", "int8"]
    argv += ["--int8-method", "static", "--calibration", str(video), "--out", str(out)]
    args = build_parser().parse_args(argv)

    def export(destination: Path, force: bool) -> Manifest:
        shutil.copytree(tiny_package, destination)
        return Manifest.load(destination)

    manifest = _export_static_int8(args, export, int8_settings("int8", True, "static"))
    q = Manifest.load(out).quantization
    assert manifest.quantization == q
    assert q["method"] == "static" and q["calibration"]["source"] == "clip.mp4: 4 frames"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "pkg"]  # scratch gone
    assert check_package(out, progress=False).passed


def _conv_head(c: int, grid: int, classes: int = 3) -> onnx.ModelProto:
    """A user head graph (1, C, grid, grid) -> boxes (grid², 4), scores (grid², classes)
    whose one layer is a Conv with a constant weight: what int8 would lower, were it rgtp's."""
    w = np.random.default_rng(5).standard_normal((4 + classes, c, 1, 1)).astype(np.float32)
    n = grid * grid
    ints = {"rows": [4 + classes, n], "zero": [0, 0], "four": [n, 4], "four0": [0, 4]}
    ints["end"] = [n, 4 + classes]
    inits = [numpy_helper.from_array(w, "w")] + [
        helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in ints.items()
    ]
    nodes = [
        helper.make_node("Conv", ["features", "w"], ["y"]),
        helper.make_node("Reshape", ["y", "rows"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["per_location"], perm=[1, 0]),
        helper.make_node("Slice", ["per_location", "zero", "four"], ["raw"]),
        helper.make_node("Abs", ["raw"], ["boxes"]),
        helper.make_node("Slice", ["per_location", "four0", "end"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "my_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, c, grid, grid])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n, classes]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_int8_lowers_rgtps_convs_not_a_users_head(tiny_detector, tmp_path, quick_export) -> None:
    """The embed and head graphs' convolutions are rgtp's to quantize; a user's head graph
    (`--head onnx`) is copied in as it came, exported at int8 or quantized afterwards.
    (quick_export: rgtp's own graphs are stand-ins; only the user's is real here.)"""
    from rgtp.export.onnx_graphs import graph_interface

    cfg = tiny_detector.cfg
    head = _conv_head(cfg.backbone.embed_dim, cfg.backbone.grid)
    plan = StagePlan.create(cfg, [20], head="onnx", user_head=graph_interface(head, "my_head"))
    fp32 = tmp_path / "fp32"
    export_package(tiny_detector, plan, fp32, progress=False, user_head=head)
    # convolutions asked for (dynamic int8 leaves them float32 unless told)
    convs = Int8Settings(op_types=("MatMul", "Conv"))
    exported = export_package(
        tiny_detector, plan, tmp_path / "int8", progress=False, user_head=head, int8=convs
    )
    lowered = quantize_package(fp32, tmp_path / "lowered", convs, progress=False)
    for manifest, path in ((exported, tmp_path / "int8"), (lowered, tmp_path / "lowered")):
        q = manifest.quantization
        assert q["op_types"] == ["MatMul", "Conv"]
        assert "head" not in q["graphs"] and "embed" in q["graphs"]
        kept = onnx.load(str(path / "head.onnx"))
        assert [n.op_type for n in kept.graph.node] == [n.op_type for n in head.graph.node]


def test_static_int8_lowers_the_head_convs_and_stays_close(tiny_package) -> None:
    """Static int8 quantizes the head graph's convolutions (Q/DQ), its boxes and scores stay
    float32, and on a feed like its calibration feeds they are within the bound `rgtp check`
    holds dynamic int8 graphs to (INT8_REL_L2, relative L2 error): int8's step is 1/127 of a
    tensor's range per layer, a few percent after the neck's and towers' stacked layers."""
    fp32 = onnx.load(str(tiny_package / "head.onnx"))
    (inp,) = fp32.graph.input
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(6)
    feeds = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(5)]
    assert Int8Settings("static").op_types == ("MatMul", "Conv")
    int8 = quantize_graph(fp32, Int8Settings("static", per_channel=True), feeds[:4])
    produced_by = {o: n.op_type for n in int8.graph.node for o in n.output}
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    assert convs and all(produced_by[n.input[0]] == "DequantizeLinear" for n in convs)
    assert [o.type.tensor_type.elem_type for o in int8.graph.output] == [TensorProto.FLOAT] * 2
    runs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds[4]
        )
        for m in (fp32, int8)
    ]
    for ref, got in zip(*runs, strict=True):
        assert not np.array_equal(ref, got)  # it did lower the arithmetic
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < INT8_REL_L2
