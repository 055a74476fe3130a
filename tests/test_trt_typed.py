"""The fp16 graphs TensorRT plans are built from: float16 where half precision holds, float32
for normalisations, Softmax and the rollout rows; each graph run on ONNX Runtime (CPU) on
the inputs a real frame gives it, against the torch fp32 reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rgtp.engines.trt_typed import FLOAT32_OPS, fp16_graph, rollout_row_nodes

# largest |fp16 graph - torch fp32| over the largest |torch fp32|, per output
TOLERANCE = 5e-3  # measured at most 9.1e-4 (rollout rows at K = N), docs/tensorrt.md


@pytest.fixture(scope="module")
def recorded(small_packages):
    """{graph file: (feeds, torch fp32 outputs)} of every graph of package "b" as the torch
    pipeline runs it on its third frame (tracking and caches in play)."""
    from rgtp.core.selection import FixedKeep
    from rgtp.package.manifest import Manifest
    from rgtp.runtime import Pipeline
    from tests.conftest import synthvid_frames

    pkg = small_packages["b"][0]
    manifest = Manifest.load(pkg)
    pipe = Pipeline.load(pkg, "torch")
    k = manifest.plan.buckets[0]
    seen: dict[str, tuple] = {}

    def record(engine, files):
        run = engine.run

        def recording(feeds):
            out = run(feeds)
            for f in files:
                seen[f] = (
                    {n: x.detach().clone() for n, x in feeds.items()},
                    {n: y.detach().clone() for n, y in out.items()},
                )
            return out

        engine.run = recording

    record(pipe.engines.embed, ["embed.onnx"])
    record(pipe.engines.head, ["head.onnx"])
    for i, by_k in enumerate(pipe.engines.stages):
        for kk, engine in by_k.items():
            graphs = manifest.stage_graphs(i) + manifest.stage_graphs(i, symbolic=True)
            files = [g.file for g in graphs if g.k in (kk, "K")]
            record(engine, files if kk == k else [g.file for g in graphs if g.k == kk])
    stream = pipe.new_stream(policy=FixedKeep(k))
    for frame in synthvid_frames(3):
        stream.step(frame)
    return pkg, seen


def element_types(graph: onnx.GraphProto) -> Callable[[str], int]:
    """The element type of a tensor of `graph`: an initializer's or input's own, a Cast's
    target, the first input's for every other node (the ops these graphs convert)."""
    known = {t.name: t.data_type for t in graph.initializer}
    known |= {i.name: i.type.tensor_type.elem_type for i in graph.input}
    producer = {out: node for node in graph.node for out in node.output}

    def of(name: str) -> int:
        if name not in known:
            node = producer[name]
            if node.op_type == "Cast":
                known[name] = next(a.i for a in node.attribute if a.name == "to")
            else:
                known[name] = of(node.input[0])
        return known[name]

    return of


def test_normalisations_softmax_and_rollout_rows_stay_float32(small_packages, tmp_path) -> None:
    pkg = small_packages["b"][0]
    for name in ("stage0_kK.onnx", "head.onnx"):
        src = onnx.load(str(pkg / name), load_external_data=False)
        blocked = set(rollout_row_nodes(src.graph))
        assert not {n.op_type for n in src.graph.node if n.name in blocked} & {"MatMul", "Gemm"}
        fp16_graph(pkg / name, tmp_path / name)
        typed = onnx.load(str(tmp_path / name), load_external_data=False)
        of = element_types(typed.graph)
        kept = [n for n in typed.graph.node if n.op_type in FLOAT32_OPS or n.name in blocked]
        assert kept, name
        for node in kept:
            assert of(node.input[0]) == onnx.TensorProto.FLOAT, (name, node.name)
        halves = [n for n in typed.graph.node if n.op_type in ("MatMul", "Conv")]
        assert halves and all(of(n.input[0]) == onnx.TensorProto.FLOAT16 for n in halves), name
        assert {o.type.tensor_type.elem_type for o in typed.graph.output} <= {
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.INT64,
        }


def test_fp16_graphs_match_torch_fp32_on_onnx_runtime(recorded, tmp_path) -> None:
    pkg, seen = recorded
    assert {"embed.onnx", "head.onnx", "stage0_kK.onnx"} <= set(seen)
    errors = {}
    for name, (feeds, want) in seen.items():
        fp16_graph(pkg / name, tmp_path / name)
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: x.numpy() for n, x in feeds.items()})
        names = [o.name for o in session.get_outputs()]
        for n, y in zip(names, got, strict=True):
            ref = want[n].numpy()
            if ref.dtype.kind != "f":
                continue
            errors[f"{name}:{n}"] = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])


def test_blocked_nodes_read_float32_in_a_graph_without_intermediate_types(tmp_path) -> None:
    """A graph that declares no intermediate types (value_info) still gets its casts: the
    LayerNormalization, the Softmax and the rollout row after it read float32, the
    MatMuls float16; ONNX Runtime runs it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dim = 16
    weights = [
        numpy_helper.from_array((rng.standard_normal((dim, dim)) * 0.1).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(dim, np.float32), "g"),
        numpy_helper.from_array(np.zeros(dim, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("LayerNormalization", ["m", "g", "b"], ["n"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["n", "w"], ["s"], name="mm2"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="sm"),
        helper.make_node("Sqrt", ["p"], ["attn_0"], name="row"),
        helper.make_node("MatMul", ["p", "w"], ["y"], name="mm3"),
    ]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, dim]) for n in ("attn_0", "y")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, dim])], out, weights
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "g.onnx"))
    fp16_graph(tmp_path / "g.onnx", tmp_path / "g16.onnx")
    typed = onnx.load(str(tmp_path / "g16.onnx"))
    of = element_types(typed.graph)
    by_name = {n.name: n for n in typed.graph.node}
    assert rollout_row_nodes(graph) == ["row"]
    for name in ("ln", "sm", "row"):
        assert of(by_name[name].input[0]) == onnx.TensorProto.FLOAT, name
    for name in ("mm", "mm2", "mm3"):
        assert of(by_name[name].input[0]) == onnx.TensorProto.FLOAT16, name
    x = rng.standard_normal((4, dim)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "g.onnx")).run(None, {"x": x})
    got = ort.InferenceSession(str(tmp_path / "g16.onnx")).run(None, {"x": x})
    for a, b in zip(got, ref, strict=True):
        assert np.abs(a - b).max() <= 5e-3 * np.abs(b).max()
