"""The typed graphs TensorRT plans are built from: every tensor's type says what the plan
computes (strongly typed networks: TensorRT 10 with `--stronglyTyped`, TensorRT 11, which
is strongly typed only, and TensorRT-RTX).

An fp32 plan is built from the package's own graph. An fp16 plan is built from a copy
whose weights and arithmetic are float16 except where half precision loses what a ViT
needs: normalisations (their variance overflows float16 on large activations), Softmax
(its sum), and the rollout rows a stage returns (the head-pooled attention rows the
pruning ranks tokens by), from their Softmax to the output. Inputs and outputs stay
float32, so a stream binds the same buffers at every precision.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# op types computed in float32 in an fp16 graph
FLOAT32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax")
ROLLOUT_ROWS = "attn_"  # the prefix of a stage graph's rollout-row outputs


def rollout_row_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes between a Softmax and a rollout-row output (`attn_{block}`), the
    Softmax excluded: what turns attention probabilities into the rows the pruning reads."""
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    todo = [o.name for o in graph.output if o.name.startswith(ROLLOUT_ROWS)]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type == "Softmax":
            continue
        seen.add(node.name)
        names.append(node.name)
        todo += [i for i in node.input if i]
    return names


def typed_weights(typed_graph: str) -> str:
    """The external-data file of a typed graph ("trt/x.fp16.onnx": "trt/x.fp16.weights")."""
    return typed_graph.removesuffix(".onnx") + ".weights"


def fp16_graph(src: Path, dst: Path) -> None:
    """Write `src` converted to float16 (`FLOAT32_OPS` and the rollout rows kept in float32,
    float32 inputs and outputs) as `dst`, its weights beside it (`typed_weights`)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # with its external weights, and every intermediate tensor's type: the converter puts
    # casts around the blocked nodes only where it knows a tensor is float
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    for i, node in enumerate(model.graph.node):  # the block list names nodes
        node.name = node.name or f"{node.op_type}_{i}"
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FLOAT32_OPS],
        node_block_list=rollout_row_nodes(model.graph),
    )
    # the converter leaves some intermediate types as they were: drop them (optional in ONNX)
    del half.graph.value_info[:]
    weights = Path(typed_weights(str(dst))).name
    onnx.save(half, str(dst), save_as_external_data=True, location=weights)
