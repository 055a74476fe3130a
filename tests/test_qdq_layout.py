"""The keys' transpose of static int8 graphs split around their Q/DQ pair (`qdq_layout`):
exact, and only where the pattern is the one it is meant for."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from rgtp.export.qdq_layout import split_key_transposes
from rgtp.export.quantize import Int8Settings, quantize_graph

KEYS = (2, 6, 3, 4)  # (windows, rows, heads, d), as a windowed block lays its keys out
QUERIES = (2, 3, 5, 4)  # (windows, heads, queries, d)


def _scores(perm=(0, 2, 3, 1), scale=(0.05,), second_reader=False, keys_first=False):
    """scores = q · DQ(Q(transpose(keys))): the exporter's q·kᵀ after the Q/DQ quantizer."""
    axis = {"axis": 1} if len(scale) > 1 else {}
    nodes = [
        helper.make_node("Transpose", ["keys"], ["kt"], perm=list(perm), name="keys_t"),
        helper.make_node("QuantizeLinear", ["kt", "s", "z"], ["kq"], **axis),
        helper.make_node("DequantizeLinear", ["kq", "s", "z"], ["kd"], **axis),
        helper.make_node("MatMul", ["kd", "q"] if keys_first else ["q", "kd"], ["scores"]),
    ]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["s0", "s1", "s2", "s3"])]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["kt"], ["other"]))
        outputs.append(
            helper.make_tensor_value_info("other", TensorProto.FLOAT, ["o0", "o1", "o2", "o3"])
        )
    graph = helper.make_graph(
        nodes,
        "scores",
        [
            helper.make_tensor_value_info("keys", TensorProto.FLOAT, list(KEYS)),
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["q0", "q1", "q2", "q3"]),
        ],
        outputs,
        [
            numpy_helper.from_array(np.array(scale, np.float32).squeeze(), "s"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8).squeeze(), "z"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _perms(model: onnx.ModelProto) -> list[list[int]]:
    return [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]


def test_the_keys_transpose_is_split_around_qdq_and_the_scores_are_the_same() -> None:
    rng = np.random.default_rng(0)
    feeds = {
        "keys": rng.standard_normal(KEYS).astype(np.float32),
        "q": rng.standard_normal(QUERIES).astype(np.float32),
    }
    model = _scores()
    before = _run(model, feeds)
    assert split_key_transposes(model) == 1
    onnx.checker.check_model(model)
    # heads first (d stays innermost), then the matrix swap the matmul folds in
    assert _perms(model) == [[0, 2, 1, 3], [0, 1, 3, 2]]
    swap = next(n for n in model.graph.node if n.name == "keys_t_matrix_t")
    assert (
        model.graph.node[-1].op_type == "MatMul" and model.graph.node[-1].input[1] == swap.output[0]
    )
    np.testing.assert_array_equal(_run(model, feeds)[0], before[0])
    assert split_key_transposes(model) == 0  # nothing left to rewrite


def test_what_the_rewrite_leaves_alone() -> None:
    for model in (
        _scores(perm=(0, 2, 1, 3)),  # d already innermost: nothing to gain
        _scores(scale=(0.05, 0.1, 0.2)),  # per-axis scales would need their axis remapped
        _scores(second_reader=True),  # another node reads the transpose as it is
        _scores(perm=(0, 2, 3, 1), keys_first=True),  # the keys are the matmul's first input
    ):
        before = _perms(model)
        assert split_key_transposes(model) == 0
        assert _perms(model) == before


def test_static_int8_graphs_come_out_split() -> None:
    """`quantize_graph`'s static lowering of a float q·kᵀ carries the split form; dynamic
    int8, which leaves attention's matmuls float32, has no Q/DQ pair to split around."""
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["keys"], ["kt"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        ],
        "scores",
        [
            helper.make_tensor_value_info("keys", TensorProto.FLOAT, list(KEYS)),
            helper.make_tensor_value_info("q", TensorProto.FLOAT, list(QUERIES)),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 3, 5, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(1)
    feeds = [
        {
            "keys": rng.standard_normal(KEYS).astype(np.float32),
            "q": rng.standard_normal(QUERIES).astype(np.float32),
        }
        for _ in range(3)
    ]
    static = quantize_graph(model, Int8Settings("static", op_types=("MatMul",)), feeds)
    assert [0, 2, 1, 3] in _perms(static) and [0, 1, 3, 2] in _perms(static)
    ref, got = _run(model, feeds[0])[0], _run(static, feeds[0])[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05
    dynamic = quantize_graph(model, Int8Settings("dynamic"))
    assert _perms(dynamic) == [[0, 2, 3, 1]]
