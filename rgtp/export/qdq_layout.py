"""A layout rewrite of static int8 (Q/DQ) graphs: the keys' transpose ahead of attention's
`q·kᵀ` split so that the innermost axis stays in place until the matmul.

The exporter writes `q @ k.transpose(-2, -1)` on keys laid out (..., rows, heads, d) as one
`Transpose` with perm (0, 2, 3, 1), and the Q/DQ quantizer puts its pair between that
transpose and the `MatMul`. OpenVINO then runs the transpose on int8 with a byte-by-byte
kernel (the d axis becomes the outermost), a reference kernel slow enough to be 7 % of a
vitdet-b stage call at K = 512 (docs/precision.md). Written as

    Transpose(0, 2, 1, 3) -> QuantizeLinear -> DequantizeLinear -> Transpose(0, 1, 3, 2) -> MatMul

the first transpose moves whole d-vectors, and the last one, a swap of the matrix axes right
before the matmul, is folded into the matmul by the backend (OpenVINO's transposed-B
matmul). Exact: a per-tensor Q/DQ pair acts element by element, so it commutes with any
transpose, and the two transposes compose to the original permutation.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


def split_key_transposes(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every `Transpose(P) -> QuantizeLinear -> DequantizeLinear ->
    MatMul (second input)` whose P moves the innermost axis but would not after a swap of
    its last two entries; returns how many were rewritten. Left alone: per-axis Q/DQ pairs
    (their axis would need remapping), and any tensor of the chain another node also reads."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    constants = {init.name: init for init in graph.initializer}
    changed: set[str] = set()  # tensors whose shape the rewrite changed
    for node in list(graph.node):
        perm = _perm(node)
        if perm is None or len(perm) < 2:
            continue
        last = len(perm) - 1
        inner = [*perm[:-2], perm[-1], perm[-2]]
        if perm[-1] == last or inner[-1] != last:
            continue
        quantize = _only_reader(readers, node.output[0], "QuantizeLinear")
        if quantize is None or not _per_tensor(quantize, constants):
            continue
        dequantize = _only_reader(readers, quantize.output[0], "DequantizeLinear")
        if dequantize is None or not _per_tensor(dequantize, constants):
            continue
        matmuls = readers.get(dequantize.output[0], [])
        if not matmuls or any(
            m.op_type != "MatMul" or list(m.input).index(dequantize.output[0]) != 1 for m in matmuls
        ):
            continue
        _set_perm(node, inner)
        swapped = f"{dequantize.output[0]}_matrix_t"
        swap = helper.make_node(
            "Transpose",
            [dequantize.output[0]],
            [swapped],
            name=f"{node.name}_matrix_t",
            perm=[*range(last - 1), last, last - 1],
        )
        for matmul in matmuls:
            matmul.input[1] = swapped
        graph.node.insert(list(graph.node).index(dequantize) + 1, swap)
        changed |= {node.output[0], quantize.output[0], dequantize.output[0]}
    if changed:  # shapes shape inference recorded for the old layout
        kept = [v for v in graph.value_info if v.name not in changed]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return len(changed) // 3


def _perm(node: onnx.NodeProto) -> list[int] | None:
    if node.op_type != "Transpose":
        return None
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None  # no perm: reverses the axes; not the keys' pattern


def _set_perm(node: onnx.NodeProto, perm: list[int]) -> None:
    for attr in node.attribute:
        if attr.name == "perm":
            del attr.ints[:]
            attr.ints.extend(perm)


def _only_reader(
    readers: dict[str, list[onnx.NodeProto]], tensor: str, op_type: str
) -> onnx.NodeProto | None:
    found = readers.get(tensor, [])
    return found[0] if len(found) == 1 and found[0].op_type == op_type else None


def _per_tensor(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> bool:
    """Whether a Q/DQ node has one scale (and zero point) for the whole tensor."""
    scale = constants.get(node.input[1])
    return scale is not None and numpy_helper.to_array(scale).size == 1
