"""Static int8 stage graphs that take and return their key/value caches in int8
(`export.int8_caches`): the rewrite is exact on the values attention reads, a package says
which caches it holds so, and the runtime, `rgtp check` and the backends follow."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rgtp.core.selection import FixedKeep
from rgtp.export.check import check_package
from rgtp.export.int8_caches import (
    attention_qdq,
    cache_scales,
    calibrated_scale,
    int8_cache_io,
)
from rgtp.export.quantize import Int8Settings
from rgtp.export.quantized_package import ensure_int8, quantize_package
from rgtp.package.manifest import Manifest
from rgtp.runtime import Pipeline
from rgtp.runtime.calibration import record_feeds

N, K, C = 6, 2, 4
SCALE = 0.03


def _attention(through: str = "Transpose", times: float | None = None) -> onnx.ModelProto:
    """scores = q · DQ(Q(layout(cache with rows `keep` replaced by `fresh`)))ᵀ, and the fresh
    rows as an output: a cached block's shape of things after the Q/DQ quantizer. `times`:
    the laid-out keys scaled by that constant first (as the exported fused attention
    scales them)."""
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["fresh"]),  # the fresh keys, computed
        helper.make_node("ScatterND", ["cache", "rows", "fresh"], ["keys"]),
        helper.make_node(
            through, ["keys"], ["laid"], **({"perm": [1, 0]} if through == "Transpose" else {})
        ),
        helper.make_node("QuantizeLinear", ["laid", "s", "z"], ["lq"]),
        helper.make_node("DequantizeLinear", ["lq", "s", "z"], ["ld"]),
        helper.make_node("MatMul", ["q", "ld"], ["scores"]),
        helper.make_node("Identity", ["fresh"], ["k_new"]),
    ]
    if through != "Transpose":  # the rows reach the pair through arithmetic: not layout
        nodes[2] = helper.make_node("Add", ["keys", "keys"], ["laid"])
        nodes[5] = helper.make_node("MatMul", ["q", "ldt"], ["scores"])
        nodes.insert(5, helper.make_node("Transpose", ["ld"], ["ldt"], perm=[1, 0]))
    if times is not None:
        nodes[2].output[0] = "laid_unscaled"
        nodes.insert(3, helper.make_node("Mul", ["laid_unscaled", "c"], ["laid"]))
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("cache", TensorProto.FLOAT, [N, C]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, C]),
            helper.make_tensor_value_info("rows", TensorProto.INT64, [K, 1]),
            helper.make_tensor_value_info("q", TensorProto.FLOAT, [3, C]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [3, N]),
            helper.make_tensor_value_info("k_new", TensorProto.FLOAT, [K, C]),
        ],
        [
            numpy_helper.from_array(np.full(C, 0.5, np.float32), "w"),
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
            numpy_helper.from_array(np.array(times or 1.0, np.float32), "c"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("times", [None, 0.35])
def test_the_rewrite_reads_what_the_float_graph_read_on_the_same_scale(times) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (N, C)).astype(np.int8)
    feeds = {
        "x": rng.standard_normal((K, C)).astype(np.float32),
        "rows": np.array([[1], [4]], np.int64),
        "q": rng.standard_normal((3, C)).astype(np.float32),
    }
    model = _attention(times=times)
    pairs = attention_qdq(model, "cache") or []
    assert [(n.op_type, f) for n, f in pairs] == [
        ("QuantizeLinear", pytest.approx(times or 1.0)),
        ("DequantizeLinear", pytest.approx(times or 1.0)),
    ]
    # the float graph with the pair on this scale (times the keys' factor), fed the values
    # the int8 cache holds
    paired = np.float32(SCALE) * np.float32(times or 1.0)
    for init in model.graph.initializer:
        if init.name == "s":
            init.CopyFrom(numpy_helper.from_array(np.array(paired, np.float32), "s"))
    scores, _ = _run(model, {**feeds, "cache": codes.astype(np.float32) * np.float32(SCALE)})
    int8_cache_io(model, {"cache": SCALE}, {"cache": "k_new"})
    onnx.checker.check_model(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)
    }
    assert types["cache"] == types["k_new"] == TensorProto.INT8
    got_scores, k_new = _run(model, {**feeds, "cache": codes})
    np.testing.assert_array_equal(got_scores, scores)
    # the fresh rows come back as the codes the matmul read them as
    want = np.clip(np.rint(feeds["x"] * 0.5 / np.float32(SCALE)), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(k_new, want)
    unread = {i.name for i in model.graph.initializer} - {
        name for node in model.graph.node for name in node.input
    }
    assert not unread  # the pair's old scale went with it


def test_the_calibrated_scale_is_read_in_the_caches_units() -> None:
    """What the quantizer calibrated for the pair (0.05 on the keys scaled by 0.35) is, on the
    cache's own values, 0.05 / 0.35: a cache scale below it would clip what the pair let
    through."""
    assert calibrated_scale(_attention(), "cache") == pytest.approx(0.05)
    assert calibrated_scale(_attention(times=0.35), "cache") == pytest.approx(0.05 / 0.35)
    assert calibrated_scale(_attention(through="Add"), "cache") == 0.0


def test_a_cache_that_reaches_attention_through_arithmetic_stays_float() -> None:
    model = _attention(through="Add")
    assert attention_qdq(model, "cache") is None
    with pytest.raises(ValueError, match="layout"):
        int8_cache_io(model, {"cache": SCALE}, {"cache": "k_new"})


def test_cache_scales_cover_every_value_calibration_held() -> None:
    feeds = [
        {"k_cache_0": np.array([[0.5, -2.54]]), "v_cache_0": np.zeros((1, 2))},
        {"k_cache_0": np.array([[1.0, 0.1]]), "v_cache_0": np.zeros((1, 2))},
    ]
    scales = cache_scales(feeds, ["k_cache_0", "v_cache_0", "k_cache_1"])
    assert scales == {"k_cache_0": pytest.approx(2.54 / 127)}  # zeros and absent: float32


@pytest.fixture(scope="module")
def int8_caches_package(tiny_package, frames, tmp_path_factory):
    feeds = record_feeds(Pipeline.load(tiny_package, "ort"), [frames], per_graph=2)
    out = tmp_path_factory.mktemp("int8-caches") / "pkg"
    quantize_package(
        tiny_package,
        out,
        Int8Settings("static", per_channel=True),
        progress=False,
        calibration=feeds,
        calibration_source="the test's frames",
    )
    return out, feeds


def test_a_static_int8_package_holds_its_caches_in_int8(int8_caches_package, frames) -> None:
    pkg, _ = int8_caches_package
    manifest = Manifest.load(pkg)
    plan = manifest.plan
    scales = manifest.quantization["int8_caches"]
    every = {c for i in range(len(plan.stages)) for c in plan.cache_io(i)}
    assert set(scales) == every and all(s > 0 for s in scales.values())
    for rec in (r for r in manifest.graphs if r.kind == "stage"):
        io = plan.cache_io(rec.stage)
        types = {t.name: t.dtype for t in (*rec.inputs, *rec.outputs)}
        assert {types[c] for c in io} == {types[f] for f in io.values()} == {"int8"}
    for backend in ("ort", "openvino"):
        if backend == "openvino":
            pytest.importorskip("openvino")
        pipe = Pipeline.load(pkg, backend)
        stream = pipe.new_stream(policy=FixedKeep(plan.buckets[0]))
        assert pipe.engines.cache_dtypes == [torch.int8] * len(plan.stages)
        before = [c.clone() for c in stream.state.stage_caches]
        for frame in frames:
            result = stream.step(frame)
            assert torch.isfinite(result.importance).all()
        caches = stream.state.stage_caches
        assert all(c.dtype == torch.int8 for c in caches)
        assert any(not torch.equal(a, b) for a, b in zip(before, caches, strict=True))


def test_check_and_reuse_know_int8_caches(int8_caches_package, tiny_package) -> None:
    pkg, feeds = int8_caches_package
    report = check_package(pkg, progress=False)
    assert report.passed, report.problems
    stages = [g for g in report.graphs if g.name.startswith("stage")]
    # compared as values (the fresh rows dequantized), not int8 codes against floats
    assert stages and all(g.rel_l2 < 0.5 for g in stages)
    settings = Int8Settings("static", per_channel=True)
    called = []

    def calibrate():
        called.append(True)
        return feeds, "again"

    assert ensure_int8(tiny_package, pkg, settings, progress=False, calibrate=calibrate) == pkg
    assert not called  # reused: the scales are the data's, not a difference of settings


def test_a_stage_holds_its_caches_in_int8_all_together_or_not_at_all(
    tiny_package, int8_caches_package, frames, tmp_path, monkeypatch
) -> None:
    """One cache of stage 1 that cannot be int8 keeps all of stage 1's float32; stage 0's
    are int8 still, and a stream holds each stage's as its engines take them."""
    from rgtp.export import quantized_package

    _, feeds = int8_caches_package
    real = quantized_package.attention_qdq
    monkeypatch.setattr(
        quantized_package,
        "attention_qdq",
        lambda model, cache: None if cache == "v_cache_4" else real(model, cache),
    )
    pkg = tmp_path / "mixed"
    quantize_package(
        tiny_package,
        pkg,
        Int8Settings("static", per_channel=True),
        progress=False,
        calibration=feeds,
    )
    manifest = Manifest.load(pkg)
    plan = manifest.plan
    assert set(manifest.quantization["int8_caches"]) == set(plan.cache_io(0))
    pipe = Pipeline.load(pkg, "ort")
    assert pipe.engines.cache_dtypes == [torch.int8, torch.float32]
    stream = pipe.new_stream(policy=FixedKeep(plan.buckets[0]))
    for frame in frames:
        assert torch.isfinite(stream.step(frame).importance).all()
    assert [c.dtype for c in stream.state.stage_caches] == [torch.int8, torch.float32]
